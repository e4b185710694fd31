"""The PPO controller: one process drives the actor groups, step by step.

    rollout -> reward -> reference log-probs and values -> advantages -> PPO epochs on policy
    and critic -> weight sync to the generators

Everything algorithmic is a pure function (:mod:`culture_rl.rl.ppo`, :mod:`.advantages`), the
plan is checked in :mod:`.plan`, the data order is :mod:`.prompt_iterator`; the actor groups and
the calls to them are the :class:`~culture_rl.rl.runtime.ActorRuntime` it holds; this module
runs the steps, times the phases and keeps the run resumable. A checkpoint holds the
policy and critic (DeepSpeed: weights, optimizer), the KL controller and the prompt iterator's
position; it is written under a temporary name and renamed when complete, and a rerun with the
same run name continues at the next step with the same prompts it would have seen.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from culture_rl.core.checkpoints import prune, write_checkpoint
from culture_rl.eval.evaluate import ranking_parse_failure_rate, ranking_scores
from culture_rl.eval.metrics import length_summary
from culture_rl.rl import ppo
from culture_rl.rl.advantages import compute_step_advantages, sequence_kl
from culture_rl.rl.dynamic_sampling import GroupFilter
from culture_rl.rl.experience import Experience
from culture_rl.rl.plan import BatchPlan, batch_plan, check_ppo_plan, ppo_roles
from culture_rl.rl.prompt_iterator import PromptIterator
from culture_rl.rl.runtime import STATE, ActorRuntime, PPOJob, PPORunError
from culture_rl.rl.timing import PhaseTimer
from culture_rl.distributed.cluster import describe_plan
from culture_rl.inference.rollout import SamplingParams
from culture_rl.rl.prefetch import Prefetch
from culture_rl.rl.rewards import mean_by_culture
from culture_rl.rl.trainers import CriticTrainer, PolicyTrainer


class PPOController:
    """The PPO loop over an :class:`ActorRuntime` (``runtime``): policy, critic (not for
    GRPO), generators and reward scorers."""

    STAGE = "ppo"  # the stage name in logs and finished.json
    CHECKPOINTS = "step_*"  # checkpoint folder names under job.checkpoint_dir

    def __init__(self, config, job: PPOJob, plan: BatchPlan | None = None):
        """``plan``: the batch plan the caller already checked (else it is checked here)."""
        self.config, self.job = config, job
        cfg = config.ppo
        if plan is None:
            plan = batch_plan(config)
            plan.check()
        self.plan = plan
        self.use_critic = ppo.needs_critic(cfg.advantage_estimator)
        self.kl = (ppo.AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
                   if cfg.adaptive_kl else ppo.FixedKLController(cfg.kl_coef))
        self.iterator = PromptIterator(job.prompts, cfg.rollout_batch_size, config.run.seed)
        self.runtime = ActorRuntime(config, job, self.STAGE, self.CHECKPOINTS)
        self.step = 0
        self.resumed_from: Path | None = None
        self.prefetched = None  # ppo.overlap_rollout: the next step's rollout, in flight

    # ---------------------------------------------------------------- set-up
    def start(self, check_resources: bool = True) -> None:
        """Start every actor group (after the resource plan is checked against the cluster,
        unless the caller did) and resume from the latest checkpoint."""
        config, res, runtime = self.config, self.config.ppo_resources, self.runtime
        roles = {r.name: r for r in ppo_roles(config)}
        print(describe_plan(list(roles.values())), flush=True)
        print(self.plan.describe(), flush=True)
        if check_resources:
            check_ppo_plan(config)

        def spec(learning_rate: float):
            return runtime.trainer_spec(learning_rate, lora=config.ppo.lora,
                                        micro_batch_size=config.ppo.micro_batch_size,
                                        accumulation=self.plan.accumulation)

        colocated = self.use_critic and res.colocate
        share = 0.5 if colocated else 1.0  # colocated: policy and critic split each bundle
        policy = runtime.start_trainers("policy", roles["policy_trainer"], PolicyTrainer,
                                        spec(config.ppo.actor_learning_rate), share)
        if self.use_critic:
            runtime.start_trainers("critic", roles["critic_trainer"], CriticTrainer,
                                   spec(config.ppo.critic_learning_rate), share,
                                   placement_group=policy.placement_group if colocated
                                   else None)
        runtime.start_generators_and_scorers(roles["rollout"], config.ppo.reward)
        runtime.setup_process_groups()
        self._resume_if_possible()

    def _resume_if_possible(self) -> None:
        resumed = self.runtime.resume(self.iterator)
        if resumed is None:
            return
        self.resumed_from, state = resumed
        self.step = int(state["step"])
        self.kl.load_state_dict(state["kl"])
        print(f"[ppo] resumed from {self.resumed_from} at step {self.step}", flush=True)
        self.sync()  # the generators start from the SFT weights: bring them up to date

    # ---------------------------------------------------------------- phases
    def _prefetch_rollout(self, step: int) -> None:
        """Start step ``step``'s rollout and reward on a background thread. The prompt
        iterator's position before its batch is kept for checkpoints, so a resumed run draws
        that batch again (generated then from the checkpoint's weights)."""
        before = self.iterator.state_dict()
        batch = self.iterator.next_batch()
        self.prefetched = Prefetch(lambda: self._sample(batch, step),
                                   tag={"step": step, "iterator": before}, name=f"rollout-{step}")

    def _iterator_state(self) -> dict:
        """The prompt iterator's position as of the last finished step (a prefetched batch
        is not yet part of it)."""
        if self.prefetched is not None:
            return self.prefetched.tag["iterator"]
        return self.iterator.state_dict()

    def _sample(self, batch: list[dict], step: int, lap=lambda phase: None
                ) -> tuple[Experience, list[str], list[float], dict]:
        """The step's samples of ``batch``, their scores and sampling metrics; with
        ``ppo.dynamic_sampling`` more batches are drawn until enough groups have a spread."""
        cfg = self.config.ppo

        def draw(prompts: list[dict], index: int):
            exp, texts = self.rollout(prompts, step, index)
            lap("rollout")
            scores = self.runtime.pool.score(texts, exp.meta)
            lap("reward")
            return exp, texts, scores

        first = draw(batch, 0)
        if not cfg.dynamic_sampling:
            return (*first, {})
        groups = GroupFilter(cfg.rollout_batch_size, cfg.samples_per_prompt)
        groups.add(*first)
        while not groups.full and groups.draws < cfg.dynamic_sampling_max_draws:
            groups.add(*draw(self.iterator.next_batch(), groups.draws))
        return groups.batch()

    def rollout(self, batch: list[dict], step: int, draw: int = 0
                ) -> tuple[Experience, list[str]]:
        cfg, ro = self.config.ppo, self.config.rollout
        params = SamplingParams(temperature=ro.temperature, top_p=ro.top_p,
                                max_new_tokens=ro.max_new_tokens,
                                samples_per_prompt=cfg.samples_per_prompt,
                                batch_size=ro.generate_batch_size)
        seed = self.config.run.seed * 100_003 + step * 131 + draw * 7_919
        return self.runtime.experience(batch, params, seed,
                                       f"rollout of step {step}",
                                       lambda i: {**_meta_of(batch[i]), "group": i})

    def sync(self) -> dict:
        return self.runtime.sync()

    def run_step(self, step: int) -> dict:
        cfg = self.config.ppo
        timer = PhaseTimer()
        lap = timer.lap

        if self.prefetched is not None and self.prefetched.tag["step"] == step:
            exp, texts, scores, sampling = self.prefetched.result()  # made while step - 1 trained
            lap("rollout")
            lap("reward")
        else:
            exp, texts, scores, sampling = self._sample(self.iterator.next_batch(), step, lap)
        self.prefetched = None
        rollout_log_probs = exp.old_log_probs
        exp.scores = torch.tensor(scores, dtype=torch.float32)
        if cfg.overlong_buffer:  # the metrics' reward_mean includes it; reward_mean/<culture> not
            exp.scores += ppo.overlong_penalty(exp.response_mask.sum(1),
                                               self.config.rollout.max_new_tokens,
                                               cfg.overlong_buffer, cfg.overlong_penalty)
        if cfg.overlap_rollout and step < cfg.max_steps:
            self._prefetch_rollout(step + 1)
        with self.runtime.trainer_calls:
            update_metrics = self._update(exp, step, lap)
        if self.prefetched is not None:  # the generators must be idle before new weights land
            self.prefetched.wait()
        lap("rollout_wait")
        sync_stats = self.sync()
        lap("sync")
        return self._step_values(exp, texts, scores, rollout_log_probs, timer,
                                 {**update_metrics, **sampling,
                                  "sync_seconds": sync_stats.get("seconds", 0.0),
                                  "sync_bytes": sync_stats.get("bytes", 0)})

    def _update(self, exp: Experience, step: int, lap) -> dict:
        """Reference log-probs and values, advantages, then the policy's and the critic's PPO
        epochs on ``exp``; the trainers' metrics."""
        cfg, runtime = self.config.ppo, self.runtime
        log_prob_refs = runtime.fan_out("policy", "log_probs", exp)
        value_refs = runtime.fan_out("critic", "values", exp) if self.use_critic else None
        parts = runtime.get(log_prob_refs, "reference and old log-probs")
        exp.old_log_probs = torch.cat([p["old_log_probs"] for p in parts])
        exp.ref_log_probs = torch.cat([p["ref_log_probs"] for p in parts])
        if value_refs is not None:
            exp.values = torch.cat(runtime.get(value_refs, "critic values"))
        lap("reference")
        compute_step_advantages(exp, estimator=cfg.advantage_estimator,  # fills exp in place
                                kl_estimator=cfg.kl_estimator, kl_coef=self.kl.value,
                                gamma=cfg.gamma, lam=cfg.lam, whiten=cfg.whiten_advantages)
        lap("advantage")
        policy_refs = runtime.fan_out("policy", "train_step", exp, step)
        critic_refs = runtime.fan_out("critic", "train_step", exp, step) if self.use_critic else []
        metrics = runtime.get(policy_refs, f"policy update of step {step}")[0]
        if critic_refs:
            metrics = {**metrics, **runtime.get(critic_refs, f"critic update of step {step}")[0]}
        lap("train")
        return metrics

    def _step_values(self, exp: Experience, texts: list[str], scores: list[float],
                     rollout_log_probs, timer: PhaseTimer, extra: dict) -> dict:
        """The step's metrics; updates the KL controller with the step's mean KL."""
        cfg = self.config.ppo
        mask = exp.response_mask.float()
        kl_per_sequence = sequence_kl(exp.old_log_probs, exp.ref_log_probs, mask,
                                      cfg.kl_estimator).sum(1)
        self.kl.update(float(kl_per_sequence.mean()), len(exp))
        step_seconds = timer.total()
        lengths = mask.sum(1)
        return {
            "reward_mean": float(exp.scores.mean()), "reward_std": float(exp.scores.std()),
            **{f"reward_mean/{c}": v for c, v in mean_by_culture(scores, exp.meta).items()},
            "parse_failure_rate": ranking_parse_failure_rate(texts, exp.meta),
            "kl": float(kl_per_sequence.mean()), "kl_coef": self.kl.value,
            "response_length": float(lengths.mean()),
            # Responses that reached max_new_tokens were cut, not ended at a stop token.
            **{f"response_length_{k}": v for k, v in length_summary(
                lengths.tolist(), self.config.rollout.max_new_tokens).items()},
            # The generator's sampling log-probs against the trainer's for the same tokens:
            # near zero when the generators hold the trainer's weights (temperature 1, top-p 1).
            "logprob_gap": float(ppo.masked_mean((rollout_log_probs - exp.old_log_probs).abs(),
                                                 mask)),
            **extra, "tokens_per_s": float(mask.sum()) / step_seconds, "samples": len(exp),
            "step_seconds": step_seconds, **timer.seconds,
        }

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, step: int) -> Path:
        """Written whole or not at all (``.partial``, manifest last, rename); a failure, e.g. a
        full disk, raises CheckpointError naming the checkpoint and leaves the previous one."""
        def write(partial: Path) -> None:
            self.runtime.save_trainers(partial, {"step": step})
            state = {"step": step, "prompts": self._iterator_state(),
                     "kl": self.kl.state_dict()}
            (partial / STATE).write_text(json.dumps(state, indent=2), "utf-8")

        final = write_checkpoint(self.job.checkpoint_dir / f"step_{step:06d}", write)
        prune(self.job.checkpoint_dir, keep=final, required=(STATE,))  # and one to fall back on
        return final

    def export(self) -> Path:
        return self.runtime.export(self.step)

    # ---------------------------------------------------------------- evaluation
    def evaluate_ranking(self) -> dict[str, float]:
        """Greedy answers to the held-out ranking prompts on the rollout workers: mean rho."""
        prompts = self.job.eval_prompts
        if not prompts:
            return {}
        params = SamplingParams(max_new_tokens=self.config.rollout.max_new_tokens,
                                batch_size=self.config.rollout.generate_batch_size, greedy=True)
        texts = [text for _, rollout in self.runtime.generate(prompts, params, 0, "evaluation")
                 for text in rollout.texts]
        scores = ranking_scores(texts, prompts)
        return {"eval_ranking_rho": scores["rho"],
                "eval_parse_failure_rate": scores["parse_failure_rate"]}

    # ---------------------------------------------------------------- the loop
    def run(self, metrics) -> dict:
        cfg = self.config.ppo
        metrics.truncate_after(self.step)
        if self.step == 0 and cfg.eval_steps:
            start = metrics.log(0, self.evaluate_ranking())
            print(f"[ppo] step 0 (the starting model): held-out rho "
                  f"{start['eval_ranking_rho']:+.3f}, parse failures "
                  f"{start['eval_parse_failure_rate']:.2f}", flush=True)
        last: dict = {}
        while self.step < cfg.max_steps:
            step = self.step + 1
            values = self.run_step(step)
            self.step = step
            if cfg.eval_steps and (step % cfg.eval_steps == 0 or step == cfg.max_steps):
                values.update(self.evaluate_ranking())
            last = metrics.log(step, values)
            print(_progress_line(step, cfg.max_steps, values), flush=True)
            if (cfg.save_steps and step % cfg.save_steps == 0) or step == cfg.max_steps:
                saved = self.save_checkpoint(step)
                if cfg.fault_injection_step == step and self.resumed_from is None:
                    raise PPORunError(f"fault injected after the checkpoint of step {step} "
                                      f"({saved}); rerun to resume")
        return last

    def shutdown(self) -> None:
        self.prefetched = None  # a rollout in flight fails once the actors are gone
        self.runtime.shutdown()


def _meta_of(prompt: dict) -> dict:
    return {k: v for k, v in prompt.items() if k != "prompt"}


def _progress_line(step: int, total: int, values: dict) -> str:
    parts = [f"[ppo] step {step}/{total}", f"reward {values['reward_mean']:+.3f}",
             f"kl {values['kl']:.4f}", f"parse_fail {values['parse_failure_rate']:.2f}",
             f"{values['step_seconds']:.1f}s (rollout {values['seconds_rollout']:.1f}, "
             f"train {values['seconds_train']:.1f}, sync {values['seconds_sync']:.2f})"]
    if "eval_ranking_rho" in values:
        parts.append(f"held-out rho {values['eval_ranking_rho']:+.3f}")
    return " | ".join(parts)
