"""``culture-rl dpo``: offline preference training (DPO, IPO, cDPO, rDPO) on pairs.

The pairs come from the reflection loop (each revision that beat its initial answer, chosen
over it, both under the original prompt), from CultureSPA (the culture-aware answer over the
culture-unaware one) or from the user's JSON Lines file (``dpo.pairs``;
culture_rl/data/preference_pairs.py). The stage is the SFT stage's path with TRL's
``DPOTrainer`` (culture_rl/train/sft.py): Ray Train + DeepSpeed workers, a LoRA adapter on the
starting model (``dpo.policy_path``) whose adapter-off self is the reference, Ray checkpoints
a rerun resumes from, and ``<run>/dpo/export`` (merged model and adapter) which ``culture-rl
eval`` picks up as the ``dpo`` model.

The method protocol (:mod:`culture_rl.methods`): :func:`plan` reads and checks the pairs and
the starting model's path, :func:`run` trains, :func:`summary` is the CLI's closing line.
"""

from __future__ import annotations

from pathlib import Path

from culture_rl.config import ExperimentConfig
from culture_rl.core.errors import ConfigError, DataError
from culture_rl.data.align_data import load_align_data
from culture_rl.data.preference_pairs import read_pairs, read_spa_pairs
from culture_rl.methods import MethodPlan
from culture_rl.methods.align.ppo import PRETRAIN, SFT, policy_start
from culture_rl.methods.align.sft import stage_dir
from culture_rl.models.paths import resolve_policy_path
from culture_rl.train.sft import PreferenceSettings, StageResult, TrainJob, run_stage

STAGE = "dpo"
# Where this run's own pairs are, by dpo.pairs (relative to the run folder).
RUN_PAIR_FILES = {"reflection": Path("reflect") / "pairs.jsonl",
                  "spa": Path("spa") / "related" / "data.jsonl"}
MAKES_PAIRS = {"reflection": "culture-rl reflect", "spa": "culture-rl spa"}


def pairs_path(config: ExperimentConfig) -> Path:
    """The file ``dpo.pairs`` reads: dpo.pairs_path when set, else this run's own file."""
    cfg = config.dpo
    if cfg.pairs_path:
        return Path(cfg.pairs_path).expanduser()
    return config.run_dir / RUN_PAIR_FILES[cfg.pairs]


def load_pairs(config: ExperimentConfig) -> list[dict]:
    """The pairs of ``dpo.pairs``, every row checked (one line naming the file and line)."""
    cfg, path = config.dpo, pairs_path(config)
    if not path.is_file():
        hint = (f" (run `{MAKES_PAIRS[cfg.pairs]}` with this run.name first)"
                if not cfg.pairs_path else "")
        raise ConfigError(f"no pairs file at {path}{hint}",
                          field="dpo.pairs_path" if cfg.pairs_path else "dpo.pairs")
    pairs = (read_spa_pairs(path, config.data.language) if cfg.pairs == "spa"
             else read_pairs(path))
    if not pairs:
        raise DataError("no pair prefers one answer to another (nothing to train on)",
                        path=path)
    return pairs


def build_dpo_job(config: ExperimentConfig, model_path: str, pairs: list[dict]) -> TrainJob:
    cfg = config.dpo
    return TrainJob(stage=STAGE, stage_dir=str(stage_dir(config, STAGE)), model_path=model_path,
                    train=cfg.train, deepspeed=config.deepspeed,
                    lora=config.lora if config.lora.enabled else None, train_rows=pairs,
                    dtype=config.model.dtype, trust_remote_code=config.model.trust_remote_code,
                    chat_template=config.model.chat_template, seed=config.run.seed,
                    preference=PreferenceSettings(cfg.loss, cfg.beta, cfg.label_smoothing))


def plan(config: ExperimentConfig) -> MethodPlan:
    """The pairs read and checked, and a given starting model found, before any Ray work."""
    if not config.lora.enabled:
        # Without an adapter TRL would copy the whole model as the reference; one path is
        # kept (and tested): the adapter on the starting model, the adapter off the reference.
        raise ConfigError("the DPO stage trains a LoRA adapter (its reference is the model "
                          "with the adapter off): set lora.enabled true", field="lora.enabled")
    pairs = load_pairs(config)
    if config.dpo.policy_path not in (SFT, PRETRAIN):
        resolve_policy_path(config.dpo.policy_path, "dpo.policy_path")
    return MethodPlan(config, load_align_data(config), pairs)


def run(plan: MethodPlan) -> StageResult:
    config = plan.config
    start = policy_start(config, plan.data, config.dpo.policy_path, field="dpo.policy_path")
    print(f"[dpo] {config.dpo.loss} (beta {config.dpo.beta}) on {len(plan.prepared)} pairs "
          f"({config.dpo.pairs}: {pairs_path(config)}), starting from {start}", flush=True)
    return run_stage(build_dpo_job(config, start, plan.prepared), config.resources)


def summary(result: StageResult) -> str:
    return f"dpo: model in {result.model_dir}"
