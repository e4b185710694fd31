"""The PPO run's plan, checked before anything starts: how the batch sizes (stated once, in
samples) map onto the actor groups, and what every group asks of the cluster."""

from __future__ import annotations

from dataclasses import dataclass

from culture_rl.core.errors import ConfigError
from culture_rl.distributed.cluster import Role, check_plan, connect
from culture_rl.rl.ppo import needs_critic


@dataclass(frozen=True)
class BatchPlan:
    """Batch sizes are stated once, in samples; this is how they map onto the groups."""

    prompts_per_step: int
    samples_per_prompt: int
    trainer_ranks: int
    mini_batch_size: int
    micro_batch_size: int
    rollout_workers: int

    @property
    def samples_per_step(self) -> int:
        return self.prompts_per_step * self.samples_per_prompt

    @property
    def accumulation(self) -> int:
        return self.mini_batch_size // (self.micro_batch_size * self.trainer_ranks)

    def check(self) -> None:
        if self.samples_per_step % self.mini_batch_size:
            raise ConfigError(f"the {self.samples_per_step} samples per step (rollout_batch_size "
                              f"x samples_per_prompt) are not a multiple of mini_batch_size "
                              f"{self.mini_batch_size}", field="ppo.mini_batch_size")
        if self.mini_batch_size % (self.micro_batch_size * self.trainer_ranks):
            raise ConfigError(f"mini_batch_size {self.mini_batch_size} is not a multiple of "
                              f"micro_batch_size {self.micro_batch_size} x "
                              f"{self.trainer_ranks} trainer ranks", field="ppo.mini_batch_size")

    def describe(self) -> str:
        per_worker = -(-self.prompts_per_step // self.rollout_workers)
        return (f"PPO batches: {self.prompts_per_step} prompts x {self.samples_per_prompt} "
                f"samples = {self.samples_per_step} samples per step; rollout: "
                f"{self.rollout_workers} workers x <= {per_worker} prompts; optimizer step every "
                f"{self.mini_batch_size} samples = micro {self.micro_batch_size} x accumulation "
                f"{self.accumulation} x {self.trainer_ranks} rank"
                f"{'s' if self.trainer_ranks != 1 else ''}; "
                f"{self.samples_per_step // self.mini_batch_size} optimizer steps per PPO epoch")


def batch_plan(config) -> BatchPlan:
    cfg, res = config.ppo, config.ppo_resources
    return BatchPlan(cfg.rollout_batch_size, cfg.samples_per_prompt, res.trainer_workers,
                     cfg.mini_batch_size, cfg.micro_batch_size, res.rollout_workers)


def ppo_roles(config) -> list:
    """Every actor group of the PPO loop with its per-actor resources (the resource plan)."""
    res = config.ppo_resources
    roles = [Role("policy_trainer", res.trainer_workers, res.cpus_per_trainer,
                  res.gpus_per_trainer)]
    if needs_critic(config.ppo.advantage_estimator):  # GRPO, RLOO, REINFORCE++: none
        roles.append(Role("critic_trainer", res.trainer_workers, res.cpus_per_trainer,
                          res.gpus_per_trainer,
                          colocated_with="policy_trainer" if res.colocate else None))
    roles += [Role("rollout", res.rollout_workers, res.cpus_per_rollout, res.gpus_per_rollout),
              Role("reward_scorer", res.reward_scorers, res.cpus_per_scorer)]
    return roles


def check_ppo_plan(config) -> None:
    """Join Ray and fail (ResourceError, with the numbers) if the roles cannot fit."""
    import ray

    connect(config.resources.address)
    check_plan(ppo_roles(config), ray.cluster_resources(), config.resources.autoscaling)
