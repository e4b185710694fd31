"""The PPO config sections: ``ppo:`` (ALIGN's PPO on the ranking reward), ``rollout:`` (the
generators and the weight sync to them) and ``ppo_resources:`` (the actor groups' placement).

``ExperimentConfig.ppo`` / ``.rollout`` / ``.ppo_resources`` (in culture_rl/config); the loop
that reads them is :mod:`culture_rl.rl.controller`.
"""

from __future__ import annotations

import warnings
from typing import Literal

from pydantic import Field, model_validator

from culture_rl.config.base import FieldProblem, ConfigSection

# vLLM's own default is 0.92 of the GPU; leave room for the CUDA context of the NCCL
# weight-sync group.
VLLM_GPU_MEMORY_UTILIZATION = 0.85

# The advantage estimators that compare the samples of one prompt (so need two or more), and
# those that train no critic; culture_rl/rl/ppo.py registers them all (the config sits below
# it, so the names are kept here; tests/unit/test_ppo_math.py checks that both agree).
GROUP_ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline")
CRITIC_FREE_ESTIMATORS = (*GROUP_ESTIMATORS, "reinforce_pp")


class PPOConfig(ConfigSection):
    policy_path: str = Field("sft", description="Model PPO starts from: 'sft' (this run's SFT "
                             "export), a model folder, an SFT export folder (its model/ is "
                             "used) or a local Hugging Face name.")
    prompt_split: Literal["train", "val", "test"] = Field(
        "val", description="Cue split the ranking prompts come from (ALIGN: validation cues).")
    ranking_words: int = Field(10, ge=2, description="Associations shown per ranking prompt "
                               "(ALIGN: 10).")
    prompts_per_cue: int = Field(1, ge=1, description="Ranking prompts per cue (different "
                                 "word samples).")
    reward: str = Field("ranking_spearman", description="Registered reward function.")
    advantage_estimator: str = Field("gae", description="Registered advantage estimator: 'gae' "
                                     "(with a critic); without one: 'grpo' (group-relative), "
                                     "'dr_grpo' (no std division), 'rloo' (leave-one-out), "
                                     "'reinforce_pp' (REINFORCE++: global whitening) or "
                                     "'reinforce_pp_baseline' (group mean subtracted first).")
    policy_loss: str = Field("ppo_clip", description="Registered policy loss: 'ppo_clip' "
                             "(token ratios) or 'gspo' (one length-normalised ratio per "
                             "sequence, GSPO).")
    loss_aggregation: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"] = Field(
        "token_mean", description="How ppo_clip's per-token losses become one number: the "
        "mean over all tokens of the batch (DAPO, OpenRLHF), the mean over sequences of each "
        "one's token mean (the GRPO paper), or of each one's token sum divided by the longest "
        "possible response (rollout.max_new_tokens; Dr. GRPO: no length bias).")
    dynamic_sampling: bool = Field(False, description="DAPO's dynamic sampling: prompts whose "
                                   "samples all scored the same are set aside and more are "
                                   "drawn until rollout_batch_size prompts have a spread (a "
                                   "group estimator only).")
    dynamic_sampling_max_draws: int = Field(4, ge=1, description="Most prompt batches one "
                                            "step draws for dynamic sampling; short of enough "
                                            "spread, the set-aside prompts fill the step.")
    overlong_buffer: int = Field(0, ge=0, description="DAPO's soft overlong punishment: over "
                                 "the last this many tokens before rollout.max_new_tokens the "
                                 "score falls linearly by up to overlong_penalty (a response "
                                 "cut at the limit loses all of it); 0: off.")
    overlong_penalty: float = Field(1.0, ge=0, description="The most the overlong punishment "
                                    "takes from a score (DAPO: 1).")
    clip_ratio_low: float | None = Field(None, gt=0, lt=1, description="Lower ratio clip, "
                                         "1 - low (default: clip_range).")
    clip_ratio_high: float | None = Field(None, gt=0, description="Upper ratio clip, 1 + "
                                          "high (default: clip_range; DAPO's clip-higher "
                                          "uses 0.28 with low 0.2).")
    rollout_batch_size: int = Field(64, gt=0, description="Prompts per PPO step (ALIGN: 64). "
                                    "Samples per step = prompts x samples_per_prompt.")
    samples_per_prompt: int = Field(1, gt=0, description="Responses sampled per prompt (>1 "
                                    "for 'grpo').")
    mini_batch_size: int = Field(16, gt=0, description="Samples per optimizer step in the PPO "
                                 "epochs (split across trainer workers).")
    micro_batch_size: int = Field(8, gt=0, description="Samples per forward pass per trainer "
                                  "worker; accumulation = mini batch / (micro x workers).")
    ppo_epochs: int = Field(1, gt=0, description="Passes over each step's samples.")
    max_steps: int = Field(20, gt=0, description="PPO steps (each: rollout, reward, update, "
                           "sync).")
    overlap_rollout: bool = Field(False, description="Generate and score step t+1's rollout "
                                  "while step t trains, as OpenRLHF's and verl's async modes "
                                  "do. Step t+1 then learns from samples of the weights before "
                                  "step t's update (one step off-policy; logprob_gap shows "
                                  "it). The weight sync waits for that rollout, so generators "
                                  "never change weights mid-generation.")
    actor_learning_rate: float = Field(5e-7, gt=0, description="Policy learning rate "
                                       "(ALIGN: 5e-7).")
    critic_learning_rate: float = Field(9e-6, gt=0, description="Critic learning rate "
                                        "(ALIGN: 9e-6).")
    kl_coef: float = Field(0.1, ge=0, description="KL penalty coefficient against the "
                           "reference (ALIGN: 0.1).")
    kl_estimator: str = Field("k1", description="Registered KL estimator in the reward: "
                              "k1, k2 or k3.")
    adaptive_kl: bool = Field(False, description="Adapt kl_coef towards kl_target (Ziegler et "
                              "al.).")
    kl_target: float = Field(6.0, gt=0, description="Target KL per sequence for the adaptive "
                             "controller.")
    kl_horizon: int = Field(10000, gt=0, description="Horizon (samples) of the adaptive "
                            "controller.")
    clip_range: float = Field(0.2, gt=0, description="PPO ratio clip.")
    value_clip_range: float = Field(0.2, gt=0, description="Critic value clip.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount of GAE.")
    lam: float = Field(0.95, ge=0, le=1, description="Lambda of GAE.")
    whiten_advantages: bool = Field(True, description="Normalise advantages over the step's "
                                    "samples.")
    entropy_coef: float = Field(0.0, ge=0, description="Entropy bonus in the policy loss.")
    lora: bool = Field(True, description="Train a fresh LoRA adapter on the policy (the "
                       "reference is then the policy with the adapter off: no second copy); "
                       "false trains all weights.")
    save_steps: int = Field(5, ge=0, description="Checkpoint every N steps (0: only at the end).")
    eval_steps: int = Field(0, ge=0, description="Held-out ranking rho every N steps (0: off).")
    fault_injection_step: int = Field(0, ge=0, description="Testing aid: stop the run with an "
                                      "error right after the checkpoint of this step, unless "
                                      "it resumed (0: off).")

    @model_validator(mode="after")
    def _batches_divide(self) -> "PPOConfig":
        samples = self.rollout_batch_size * self.samples_per_prompt
        if self.mini_batch_size > samples:
            raise FieldProblem("mini_batch_size", f"mini_batch_size {self.mini_batch_size} "
                               f"exceeds the samples per step ({samples} = rollout_batch_size "
                               f"{self.rollout_batch_size} x samples_per_prompt "
                               f"{self.samples_per_prompt})")
        if self.advantage_estimator in GROUP_ESTIMATORS and self.samples_per_prompt < 2:
            raise FieldProblem("samples_per_prompt", f"advantage_estimator "
                               f"'{self.advantage_estimator}' compares the samples of a "
                               f"prompt: it needs samples_per_prompt >= 2 (got "
                               f"{self.samples_per_prompt})")
        if self.dynamic_sampling and self.advantage_estimator not in GROUP_ESTIMATORS:
            raise FieldProblem("dynamic_sampling", f"dynamic_sampling filters the groups of a "
                               f"group estimator ({', '.join(GROUP_ESTIMATORS)}), not "
                               f"'{self.advantage_estimator}'")
        if (self.advantage_estimator in CRITIC_FREE_ESTIMATORS
                and "critic_learning_rate" in self.model_fields_set):
            warnings.warn(f"ppo.critic_learning_rate is set but advantage_estimator "
                          f"'{self.advantage_estimator}' trains no critic: it is not used",
                          stacklevel=2)
        return self


class RolloutConfig(ConfigSection):
    backend: Literal["hf", "vllm"] = Field("hf", description="Generation engine of the rollout "
                                           "workers; 'vllm' needs vLLM and a GPU.")
    vllm_gpu_memory_utilization: float = Field(
        VLLM_GPU_MEMORY_UTILIZATION, gt=0, le=1, description="With backend 'vllm': the share "
        "of the worker's GPU memory vLLM takes for weights and KV cache (vLLM's "
        "gpu_memory_utilization). With a fractional ppo_resources.gpus_per_rollout it must "
        "not exceed that fraction.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(96, gt=0, description="Longest response.")
    generate_batch_size: int = Field(32, gt=0, description="Prompts per generate() call in a "
                                     "worker (KV-cached, left-padded).")
    sync_bucket_mb: float = Field(64, gt=0, description="Weight-sync bucket size in MB "
                                  "(one RPC per bucket).")
    sync_share_pages: bool = Field(True, description="Rollout workers on the trainer's node "
                                   "use the weight-sync shared-memory pages as their CPU "
                                   "weights instead of copying them out: one copy per sync "
                                   "and one copy in memory for all of them (the loops here "
                                   "never generate during a sync). False: each copies.")
    sync_transport: Literal["auto", "shared_memory", "object_store", "collective"] = Field(
        "auto", description="How weight-sync buckets reach the rollout workers. 'auto': "
        "/dev/shm files when every worker is on the trainer's node, else Ray's object store. "
        "'collective': a broadcast over a process group of the trainer and the workers, NCCL "
        "when the policy is on a GPU (each worker then needs a GPU of its own), gloo on CPUs.")


class PPOResourcesConfig(ConfigSection):
    trainer_workers: int = Field(1, gt=0, description="Policy trainer ranks (DeepSpeed).")
    rollout_workers: int = Field(2, gt=0, description="Rollout generator actors.")
    reward_scorers: int = Field(2, gt=0, description="Reward scorer actors.")
    cpus_per_trainer: float = Field(1, gt=0, description="CPUs per policy/critic rank.")
    cpus_per_rollout: float = Field(0.25, ge=0, description="CPUs per rollout worker.")
    cpus_per_scorer: float = Field(0.25, ge=0, description="CPUs per reward scorer.")
    gpus_per_trainer: float = Field(0, ge=0, description="GPUs per policy/critic rank.")
    gpus_per_rollout: float = Field(0, ge=0, description="GPUs per rollout worker.")
    colocate: bool = Field(False, description="Put the critic on the policy trainer's bundles "
                           "(fractional shares of them) instead of its own.")
    placement_timeout_s: float = Field(120, gt=0, description="Wait this long for the "
                                       "placement group before failing with the plan.")
    call_timeout_s: float = Field(1800, gt=0, description="Longest wait for one actor call "
                                  "(rollout, train, sync) before the step fails.")
