"""ALIGN stage 2: PPO on ranking prompts with the Spearman ranking reward.

Builds the ranking prompts (``ppo.ranking_words`` sampled associations of a cue, to be ordered by
how often the target culture names them) and the held-out evaluation prompts, resolves the model
PPO starts from, and runs the :class:`~culture_rl.rl.controller.PPOController` loop. With
``ppo.policy_path: sft`` a missing SFT model is trained first (and, for the tiny preset, the
base model before it), so the quickstart PPO config runs end to end on a fresh machine.

The method protocol (:mod:`culture_rl.methods`): :func:`plan` checks the registries and the
batch plan and loads the data, :func:`run` trains, :func:`summary` is the CLI's closing line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from culture_rl.config import ExperimentConfig
from culture_rl.core.errors import ConfigError
from culture_rl.core.checkpoints import FINISHED
from culture_rl.rl.controller import PPOController
from culture_rl.rl.runtime import PPOJob
from culture_rl.rl.plan import BatchPlan, batch_plan, check_ppo_plan
from culture_rl.data.align_data import AlignData, load_align_data
from culture_rl.data.ranking_prompts import eval_ranking_prompts, ranking_prompts
from culture_rl.models.paths import resolve_policy_path
from culture_rl.methods import MethodPlan
from culture_rl.methods.align.sft import (TINY, pretrained_tiny_path, run_pretrain, run_sft,
                                         stage_dir)
from culture_rl.distributed.metrics import StepMetrics
from culture_rl.rl.ppo import ADVANTAGE_ESTIMATORS, KL_ESTIMATORS, POLICY_LOSSES
from culture_rl.rl.rewards import REWARD_FUNCTIONS

SFT = "sft"
PRETRAIN = "pretrain"


@dataclass
class PPOResult:
    export_dir: Path
    model_dir: Path
    final_metrics: dict
    already_finished: bool = False


def validate(config: ExperimentConfig) -> BatchPlan:
    """What pydantic cannot check alone -- names only the registries know, batch sizes that
    must divide -- fails here, before any model is trained or any actor started."""
    for registry, field in ((REWARD_FUNCTIONS, "reward"),
                            (ADVANTAGE_ESTIMATORS, "advantage_estimator"),
                            (POLICY_LOSSES, "policy_loss"), (KL_ESTIMATORS, "kl_estimator")):
        name = getattr(config.ppo, field)
        if name not in registry:
            raise ConfigError(f"unknown {registry.what} {name!r}; registered: "
                              f"{', '.join(sorted(registry))}", field=f"ppo.{field}")
    plan = batch_plan(config)
    plan.check()
    return plan


def build_ppo_job(config: ExperimentConfig, data: AlignData, policy_path: str) -> PPOJob:
    """The prompts and folders of a PPO run (``validate`` the config first)."""
    cues = data.split[config.ppo.prompt_split]
    prompts = ranking_prompts(config, data, cues, seed=config.run.seed,
                              per_cue=config.ppo.prompts_per_cue)
    if not prompts:
        raise ConfigError(f"no ranking prompts: no cue of the {config.ppo.prompt_split!r} split "
                          f"has {config.ppo.ranking_words} associations", field="ppo.ranking_words")
    return PPOJob(stage_dir=stage_dir(config, "ppo"), run_name=config.run.name,
                  policy_path=policy_path, prompts=prompts,
                  eval_prompts=eval_ranking_prompts(config, data) if config.ppo.eval_steps else [])


def policy_start(config: ExperimentConfig, data: AlignData, path: str | None = None,
                 field: str = "ppo.policy_path") -> str:
    """The model a stage starts from (``path``, default ``ppo.policy_path``): 'sft', this
    run's SFT export (trained first if missing); 'pretrain', this run's base model (the tiny
    preset pretrained first if missing); else a folder or local hub name."""
    path = config.ppo.policy_path if path is None else path
    if path == PRETRAIN:
        if config.model.path != TINY:
            return resolve_policy_path(config.model.path, field)
        if not (pretrained_tiny_path(config) / "config.json").is_file():
            run_pretrain(config, data)
        return str(pretrained_tiny_path(config))
    if path != SFT:
        return resolve_policy_path(path, field)
    export = stage_dir(config, SFT) / "export"
    if not (export / "finished.json").is_file():
        print(f"[{field.split('.')[0]}] {field} is 'sft' and {export} holds no finished SFT "
              "model: training it first", flush=True)
        if config.model.path == TINY and not (pretrained_tiny_path(config) / "config.json"
                                              ).is_file():
            run_pretrain(config, data)
        run_sft(config, data)
    return resolve_policy_path(str(export))


def _result(job: PPOJob, metrics: dict, already: bool) -> PPOResult:
    return PPOResult(job.export_dir, job.export_dir / "model", metrics, already)


def run_ppo(config: ExperimentConfig, data: AlignData, plan: BatchPlan | None = None
            ) -> PPOResult:
    """Train PPO (``plan``: what :func:`validate` returned, when the caller checked first)."""
    plan = plan if plan is not None else validate(config)
    folder = stage_dir(config, "ppo")
    if (folder / "export" / FINISHED).is_file():
        print(f"[ppo] already finished ({folder / 'export'}); nothing to do. Use another "
              "run.name to train again.", flush=True)
        job = PPOJob(folder, config.run.name, "", [])
        return _result(job, json.loads((folder / "export" / FINISHED).read_text("utf-8")), True)
    # Cheap checks first: a wrong model path, then the resource plan (which joins Ray), then
    # the minutes of training a missing SFT prerequisite may take.
    given = config.ppo.policy_path != SFT
    policy = resolve_policy_path(config.ppo.policy_path) if given else None
    check_ppo_plan(config)
    job = build_ppo_job(config, data, policy or policy_start(config, data))
    print(f"[ppo] policy {job.policy_path}; {len(job.prompts)} ranking prompts "
          f"({config.ppo.prompt_split} cues), {len(job.eval_prompts)} held-out", flush=True)
    controller = PPOController(config, job, plan)
    try:
        controller.start(check_resources=False)  # checked above
        last = controller.run(StepMetrics(folder / "metrics.jsonl", config.run.name, "ppo"))
        export = controller.export()
        print(f"[ppo] exported to {export}", flush=True)
    finally:
        controller.shutdown()
    return _result(job, last, False)


def plan(config: ExperimentConfig) -> MethodPlan:
    batch = validate(config)  # needs no data: a bad batch setting must not write the world first
    return MethodPlan(config, load_align_data(config), batch)


def run(plan: MethodPlan) -> PPOResult:
    return run_ppo(plan.config, plan.data, plan.prepared)


def summary(result: PPOResult) -> str:
    return f"ppo: model in {result.model_dir}"
