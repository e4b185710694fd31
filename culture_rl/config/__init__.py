"""Typed run configuration (the schema), loaded from YAML with ``extends:`` and dotted
command-line overrides (the loading is in :mod:`culture_rl.config.loading`, re-exported here).

Every field carries its help text (``culture-rl config fields`` prints them), so a config file
documents itself. Any problem — unknown key, wrong type, impossible value — becomes one
:class:`~culture_rl.core.errors.ConfigError` naming the file the offending value came from and the
dotted field path, e.g. ``configs/x.yaml: sft.learning_rate: Input should be greater than 0``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

# The section base class lives apart so that section modules such as config/calm.py can build
# on it without importing this module (which imports them). The sections defined elsewhere are
# re-exported here, so `from culture_rl.config import TrainConfig` keeps working.
from culture_rl.config.base import (ConfigSection, CultureKey,  # noqa: E402,F401  (re-exported)
                                    FieldProblem, section_with_defaults)
from culture_rl.config.calm import CalmConfig  # noqa: E402
from culture_rl.config.dpo import DpoConfig  # noqa: E402,F401
from culture_rl.config.reflect import ReflectConfig  # noqa: E402
from culture_rl.config.ppo import (PPOConfig, PPOResourcesConfig,  # noqa: E402,F401
                                   RolloutConfig)  # (re-exported)
from culture_rl.config.world import WorldConfig  # noqa: E402,F401
from culture_rl.config.train import TrainConfig  # noqa: E402,F401
from culture_rl.config.spa import SpaConfig  # noqa: E402,F401
from culture_rl.config.sweep import SweepConfig  # noqa: E402,F401


class RunConfig(ConfigSection):
    name: str = Field("quickstart", min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$",
                      description="Run name; outputs go to <storage_path>/<name>/. Rerunning "
                                  "with the same name resumes from the latest checkpoint.")
    storage_path: str = Field("runs", description="Root folder of all runs. On a multi-node "
                              "cluster use a path every node sees (NFS).")
    seed: int = Field(42, description="Seed for data splits, sampling and model initialisation.")


class TinyModelConfig(ConfigSection):
    hidden_size: int = Field(128, gt=0, description="Width of the tiny Llama.")
    num_layers: int = Field(4, gt=0, description="Decoder layers of the tiny Llama.")
    num_heads: int = Field(4, gt=0, description="Attention heads (hidden_size must divide).")
    intermediate_size: int = Field(384, gt=0, description="MLP width of the tiny Llama.")
    vocab_size: int = Field(1500, ge=300, description="BPE vocabulary trained on the corpus.")
    max_position_embeddings: int = Field(256, gt=0, description="Longest sequence the model takes.")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "TinyModelConfig":
        if self.hidden_size % self.num_heads:
            raise FieldProblem("num_heads", f"hidden_size {self.hidden_size} is not divisible "
                               f"by num_heads {self.num_heads}")
        return self


class ModelConfig(ConfigSection):
    path: str = Field("tiny", description="Hugging Face model name or local folder (local files "
                      "only, nothing is downloaded), 'tiny' to build the tiny preset, or "
                      "'smollm2-135m-instruct': a real instruct model that installs offline "
                      "(converted once into CULTURE_RL_MODEL_CACHE).")
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig,
                                  description="Shape of the 'tiny' preset model.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype when loading; CPUs want float32.")
    trust_remote_code: bool = Field(False, description="Pass trust_remote_code to from_pretrained.")
    chat_template: Literal["auto", "none"] = Field(
        "auto", description="How the model reads prompts: 'auto' through the tokenizer's chat "
        "template when it has one (instruct models; the culture preamble is the system "
        "message), 'none' as raw text whatever the tokenizer. An export's tokenizer keeps the "
        "choice its model was trained with.")


class LoraConfig(ConfigSection):
    enabled: bool = Field(True, description="Train a LoRA adapter instead of all weights.")
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: int = Field(32, gt=0, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: list[str] = Field(["q_proj", "v_proj"], min_length=1,
                                      description="Module names to adapt, or ['all-linear'].")
    merge_on_export: bool = Field(True, description="Also export a merged full model beside "
                                  "the adapter.")


class DeepSpeedConfig(ConfigSection):
    zero_stage: int = Field(2, ge=0, le=3, description="ZeRO stage 0-3.")
    offload_optimizer: bool = Field(False, description="Keep optimizer state on the CPU "
                                    "(ZeRO >= 1).")
    offload_params: bool = Field(False, description="Keep parameters on the CPU (ZeRO 3 only).")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Training precision; "
                                                       "bf16 on GPUs that have it.")
    gradient_clipping: float = Field(1.0, gt=0, description="Max global gradient norm.")

    @model_validator(mode="after")
    def _offload_needs_stage(self) -> "DeepSpeedConfig":
        if self.offload_params and self.zero_stage != 3:
            raise FieldProblem("offload_params", f"offload_params needs zero_stage 3 (got "
                               f"zero_stage {self.zero_stage})")
        if self.offload_optimizer and self.zero_stage == 0:
            raise FieldProblem("offload_optimizer", "offload_optimizer needs zero_stage >= 1 "
                               "(got zero_stage 0)")
        return self


class DataConfig(ConfigSection):
    swow_path: str | None = Field(None, description="SWOW CSV (raw or aggregated). Empty: the "
                                  "synthetic world's norms for `culture`.")
    culture: CultureKey | None = Field(None, description="Target culture. For the synthetic "
                                       "world a culture name or index; for real data a label "
                                       "used in reports.")
    country: list[str] | None = Field(None, description="Raw SWOW: keep participants from these "
                                      "countries.")
    native_language: list[str] | None = Field(None, description="Raw SWOW: keep participants "
                                              "with these native languages.")
    survey_path: str | None = Field(None, description="WVS questions (GlobalOpinionQA CSV or "
                                    "JSONL) for evaluation.")
    skip_mismatched_survey_rows: bool = Field(False, description="Drop (with a warning) survey "
                                              "rows whose distribution length differs from the "
                                              "options instead of failing.")
    warriner_path: str | None = Field(None, description="Warriner et al. valence/arousal/"
                                      "dominance norms (CSV/TSV) for the lexical-norm "
                                      "evaluation. Empty: the synthetic world's.")
    brysbaert_path: str | None = Field(None, description="Brysbaert et al. concreteness norms "
                                       "(CSV/TSV). Empty: the synthetic world's.")
    statements_path: str | None = Field(None, description="Labelled value statements (JSONL: "
                                        "text, label, optional culture) for value "
                                        "classification. Empty: the synthetic world's.")
    language: Literal["en", "zh"] = Field("en", description="Prompt template language.")
    resample_fraction: float = Field(0.7, gt=0, le=1, description="Share of a cue's associations "
                                     "kept in one SFT example (ALIGN: 0.7).")
    examples_per_cue: int = Field(4, ge=1, description="Resampled SFT examples per training cue.")
    max_associations: int = Field(10, ge=1, description="Longest association list in an SFT "
                                  "target.")
    split_seed: int = Field(42, description="Seed of the 70/20/10 cue split (ALIGN: 42).")

    @field_validator("swow_path", "survey_path", "warriner_path", "brysbaert_path",
                     "statements_path", mode="before")
    @classmethod
    def _blank_path_is_unset(cls, value: Any) -> Any:
        # "Empty" means the synthetic world's file; `swow_path: ""` must not be a third state
        # (it was neither None nor a path, and the loader fell through to an assert).
        return None if isinstance(value, str) and not value.strip() else value


class ResourcesConfig(ConfigSection):
    num_workers: int = Field(2, gt=0, description="Ray Train workers (one DeepSpeed rank each).")
    use_gpu: bool = Field(False, description="One GPU per worker when true (NCCL), else CPU "
                          "(gloo).")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs reserved per worker.")
    address: str | None = Field(None, description="Ray address to connect to; empty joins "
                                "RAY_ADDRESS or starts a local Ray.")
    autoscaling: bool = Field(False, description="The cluster starts nodes on demand: do not "
                              "fail when the plan exceeds the nodes running now.")
    max_failures: int = Field(0, ge=-1, description="Worker failures Ray Train recovers from "
                              "(restart from the latest checkpoint); -1: unlimited.")
    collective_timeout_s: float = Field(1800, gt=0, description="Longest wait of the training "
                                        "workers' process-group set-up and of any collective "
                                        "(a peer that hangs fails the run after this, naming "
                                        "the collective, instead of stalling it).")
    worker_start_timeout_s: float = Field(600, gt=0, description="Longest wait for the Ray "
                                          "Train workers to start and import torch, "
                                          "transformers and DeepSpeed (Ray's "
                                          "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, 60 s by "
                                          "default, is short for a busy node; the variable, "
                                          "when set, wins).")
    health_check_timeout_s: float = Field(600, gt=0, description="Longest a poll of a Ray "
                                          "Train worker may hang before the worker is marked "
                                          "dead (Ray's RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S; "
                                          "the variable, when set, wins).")


class EvalConfig(ConfigSection):
    k_values: list[int] = Field([1, 3, 5, 10], min_length=1, description="k of P@k.")
    split: Literal["train", "val", "test", "heldout"] = Field(
        "heldout", description="Cue split evaluated ('heldout': validation + test cues).")
    max_cues: int = Field(0, ge=0, description="Evaluate at most this many cues (0: all).")
    max_new_tokens: int = Field(40, gt=0, description="Tokens generated per association answer.")
    batch_size: int = Field(16, gt=0, description="Prompts per generation batch.")
    models: dict[str, str] = Field({}, description="`culture-rl eval`: models to evaluate, "
                                   "label -> a stage of this run ('pretrain', 'sft', 'ppo', "
                                   "'calm', 'reflect', 'dpo': its export), a model or export "
                                   "folder, or a local Hugging Face name. Empty: every exported "
                                   "stage of this run.")
    cultures: list[CultureKey] = Field([], description="Cultures to score against (names, or "
                                       "indices of the synthetic world). Empty: every culture "
                                       "in the data.")
    evaluations: list[str] = Field(["associations", "lexical_norms", "wvs", "high_tension",
                                    "value_classification", "ranking"],
                                   min_length=1, description="Registered evaluations to run, "
                                   "in order (`culture_rl/eval/evaluate.py`).")
    culture_prompt: bool = Field(False, description="Prefix every prompt with the culture's "
                                 "preamble ('You are a person from X') and score each culture "
                                 "on its own prompted answers (culture-joint models); false "
                                 "scores the model's unprompted default against every culture.")
    tension_pair: list[CultureKey] = Field([], description="High-tension items: the two "
                                           "cultures [A, B] compared. Empty: the first other "
                                           "culture and the target culture.")
    tension_top_n: int = Field(50, gt=0, description="High-tension items: the N questions on "
                               "which A and B disagree most.")
    max_statements: int = Field(240, ge=0, description="Value classification: statements "
                                "scored at most (a seeded sample; 0: all).")
    concrete_threshold: float = Field(3.0, ge=1, le=5, description="Lexical norms: a word "
                                      "rated at least this concrete (Brysbaert 1-5) counts as "
                                      "concrete.")
    human_associations: int = Field(10, gt=0, description="Lexical norms: the cue's most "
                                    "frequent human associations the answers are compared "
                                    "with.")
    workers: int = Field(2, gt=0, description="Evaluation actors (each holds the model being "
                         "evaluated; prompts are split between them).")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs per evaluation actor.")
    gpus_per_worker: float = Field(0, ge=0, description="GPUs per evaluation actor.")
    call_timeout_s: float = Field(1800, gt=0, description="Longest wait for one evaluation "
                                  "call (model load, a generation or scoring pass).")

    @model_validator(mode="after")
    def _positive_k(self) -> "EvalConfig":
        if any(k < 1 for k in self.k_values):
            raise FieldProblem("k_values", f"every k must be >= 1 (got {self.k_values})")
        return self

    @field_validator("tension_pair")
    @classmethod
    def _two_cultures(cls, value: list[str]) -> list[str]:
        if value and (len(value) != 2 or value[0] == value[1]):
            raise ValueError("takes two different cultures [A, B] (or [] for the default)")
        return value

    @field_validator("evaluations")
    @classmethod
    def _each_evaluation_once(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("lists an evaluation twice")
        return value




class ExperimentConfig(ConfigSection):
    run: RunConfig = Field(default_factory=RunConfig, description="Name, storage and seed.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Base model.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA adapter.")
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig,
                                       description="DeepSpeed ZeRO settings.")
    world: WorldConfig = Field(default_factory=WorldConfig, description="Synthetic culture world.")
    data: DataConfig = Field(default_factory=DataConfig, description="Data sets and examples.")
    pretrain: section_with_defaults(
        TrainConfig, epochs=12, learning_rate=3e-3, warmup_ratio=0.05, micro_batch_size=16
    ) = Field(description="Plain LM training of the tiny base model on the synthetic corpus.")
    sft: TrainConfig = Field(default_factory=TrainConfig, description="LoRA SFT on association "
                             "norms (ALIGN stage 1).")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig,
                                       description="Ray workers and devices.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation.")
    ppo: PPOConfig = Field(default_factory=PPOConfig, description="PPO on ALIGN ranking "
                           "prompts (ALIGN stage 2).")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Rollout "
                                   "generation and weight sync.")
    ppo_resources: PPOResourcesConfig = Field(default_factory=PPOResourcesConfig,
                                              description="Actor groups of the PPO loop.")
    sweep: SweepConfig = Field(default_factory=SweepConfig, description="Ray Tune sweep "
                               "across cultures and SFT hyper-parameters (`culture-rl sweep`).")
    spa: SpaConfig = Field(default_factory=SpaConfig, description="CultureSPA pipeline "
                           "(`culture-rl spa`).")
    calm: CalmConfig = Field(default_factory=CalmConfig, description="CALM modules, their "
                             "ablation flags and loss weights (`culture-rl calm`).")
    reflect: ReflectConfig = Field(default_factory=ReflectConfig, description="Self-prompted "
                                   "reflective learning on Ray actors (`culture-rl reflect`).")
    dpo: DpoConfig = Field(default_factory=DpoConfig, description="Offline preference "
                           "training on pairs (`culture-rl dpo`).")

    @model_validator(mode="after")
    def _vllm_has_its_gpu(self) -> "ExperimentConfig":
        # Checked here, before any actor starts, not in the rollout worker's constructor.
        if self.rollout.backend != "vllm":
            return self
        gpus = self.ppo_resources.gpus_per_rollout
        if gpus == 0:
            raise FieldProblem("rollout.backend", "rollout.backend 'vllm' needs a GPU per "
                               "rollout worker: set ppo_resources.gpus_per_rollout (got 0)")
        if gpus < 1 and self.rollout.vllm_gpu_memory_utilization > gpus:
            raise FieldProblem("rollout.vllm_gpu_memory_utilization", "vLLM would take "
                               f"{self.rollout.vllm_gpu_memory_utilization} of a GPU that "
                               f"ppo_resources.gpus_per_rollout shares out as {gpus}: lower "
                               "rollout.vllm_gpu_memory_utilization to at most that")
        return self

    @model_validator(mode="after")
    def _overlong_buffer_fits(self) -> "ExperimentConfig":
        if self.ppo.overlong_buffer >= self.rollout.max_new_tokens:
            raise FieldProblem("ppo.overlong_buffer", f"ppo.overlong_buffer "
                               f"{self.ppo.overlong_buffer} must be below "
                               f"rollout.max_new_tokens {self.rollout.max_new_tokens} (the "
                               "penalty ramps over the last overlong_buffer tokens)")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.run.storage_path).expanduser().resolve() / self.run.name


# Reading files and overrides into the schema lives in config/loading.py; importing it last, once
# ExperimentConfig exists, keeps `from culture_rl.config import load_config` working.
from culture_rl.config.loading import (COMMAND_LINE, config_to_yaml,  # noqa: E402,F401
                                       describe_fields, load_config, parse_override,
                                       write_run_config)
