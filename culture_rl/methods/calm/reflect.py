"""`culture-rl reflect`: CALM's self-prompted reflective learning on the run's data.

Builds the prompts (one per cue and culture of ``reflect.cultures``, each naming its culture),
the held-out prompts (``reflect.eval_cues`` cues of ``eval.split`` per culture), resolves the
model the loop starts from and runs the :class:`~culture_rl.rl.reflection_loop.
ReflectionController`. Outputs under ``<run>/reflect/``: ``metrics.jsonl`` (one record per
round, round 0 the starting model's held-out scores), ``checkpoints/``, ``export/model`` (the
policy, adapter merged), ``results.json`` and ``report.md`` (the round table per culture).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from culture_rl.config import ExperimentConfig
from culture_rl.data import examples, prompts as templates
from culture_rl.core.errors import ConfigError
from culture_rl.core.checkpoints import FINISHED
from culture_rl.rl.runtime import PPOJob
from culture_rl.data.align_data import AlignData, load_align_data
from culture_rl.methods import MethodPlan
from culture_rl.methods.align.sft import stage_dir
from culture_rl.data.ranking_prompts import heldout_ranking_cues
from culture_rl.distributed.metrics import StepMetrics
from culture_rl.methods.align.ppo import policy_start
from culture_rl.rl.reflection_loop import ReflectionController, check_reflection_plan
from culture_rl.rl.rewards import REWARD_FUNCTIONS

TASK_REWARDS = {"associations": "association_overlap", "ranking": "ranking_spearman"}
CALM = "calm"


@dataclass
class ReflectResult:
    export_dir: Path
    rounds: list[dict]
    already_finished: bool = False


def reward_of(config: ExperimentConfig) -> str:
    return config.reflect.reward or TASK_REWARDS[config.reflect.task]


def cultures_of(config: ExperimentConfig, data: AlignData) -> list[str]:
    known = list(data.norms_by_culture)
    chosen = config.reflect.cultures or known
    unknown = [c for c in chosen if c not in data.norms_by_culture]
    if unknown:
        raise ConfigError(f"unknown culture {unknown[0]!r}; the data has "
                          f"{', '.join(known)}", field="reflect.cultures")
    return chosen


def validate(config: ExperimentConfig, data: AlignData) -> None:
    """Names the registries know, cultures the data has: checked before any Ray work."""
    if reward_of(config) not in REWARD_FUNCTIONS:
        raise ConfigError(f"unknown reward {reward_of(config)!r}; registered: "
                          f"{', '.join(sorted(REWARD_FUNCTIONS))}", field="reflect.reward")
    cultures_of(config, data)
    if config.reflect.policy_path == CALM:
        _calm_start(config)


def _calm_start(config: ExperimentConfig) -> str:
    export = stage_dir(config, CALM) / "export"
    if not (export / FINISHED).is_file():
        raise ConfigError(f"reflect.policy_path is 'calm' but {export} holds no finished CALM "
                          "model (run `culture-rl calm` with this run.name first)",
                          field="reflect.policy_path")
    return str(export.resolve())


def task_prompts(config: ExperimentConfig, data: AlignData, cues: list[str], culture: str,
                 seed: int) -> list[dict]:
    """The task's prompts for ``cues`` from ``culture``'s perspective (its preamble first),
    with what the reward needs (``human`` for associations, ``human_order`` for ranking)."""
    language = config.data.language
    preamble = templates.culture_preamble(culture, language)
    norms = data.norms_by_culture[culture]
    if config.reflect.task == "ranking":
        rows = examples.build_ranking_examples(norms, cues, n_words=config.ppo.ranking_words,
                                               language=language, seed=seed)
        return [{**row, "prompt": preamble + row["prompt"], "culture": culture} for row in rows]
    return [{"prompt": preamble + templates.association_prompt(cue, language), "cue": cue,
             "culture": culture, "human": [word for word, _ in norms[cue]], "k": 5}
            for cue in cues if norms.get(cue)]


def _cues(data: AlignData, culture: str, names: list[str]) -> list[str]:
    """Cues of the target culture's split that ``culture``'s norms also have."""
    norms = data.norms_by_culture[culture]
    return [cue for cue in names if cue in norms]


def build_job(config: ExperimentConfig, data: AlignData, policy_path: str) -> PPOJob:
    cfg = config.reflect
    train_cues = data.split[cfg.prompt_split]
    held = heldout_ranking_cues(config, data, cfg.prompt_split, limit=False)
    train, evaluation = [], []
    for index, culture in enumerate(cultures_of(config, data)):
        train += task_prompts(config, data, _cues(data, culture, train_cues), culture,
                              seed=config.run.seed + index)
        evaluation += task_prompts(config, data, _cues(data, culture, held)[:cfg.eval_cues],
                                   culture, seed=config.run.seed + 1000 + index)
    if not train:
        raise ConfigError(f"no reflection prompts: no cue of the {cfg.prompt_split!r} split has "
                          "norms for the chosen cultures", field="reflect.prompt_split")
    return PPOJob(stage_dir=stage_dir(config, "reflect"), run_name=config.run.name,
                  policy_path=policy_path, prompts=train,
                  eval_prompts=evaluation if cfg.eval_cues else [])


def seen_prompts(config: ExperimentConfig, job: PPOJob) -> list[dict]:
    """A fixed sample of the training prompts, ``reflect.eval_cues`` per culture (the first
    ones), scored greedily after every round alongside the held-out prompts."""
    taken: dict[str, int] = {}
    chosen = []
    for prompt in job.prompts:
        if taken.get(prompt["culture"], 0) < config.reflect.eval_cues:
            taken[prompt["culture"]] = taken.get(prompt["culture"], 0) + 1
            chosen.append(prompt)
    return chosen


def resolve_start(config: ExperimentConfig, data: AlignData) -> str:
    """``reflect.policy_path``: 'sft' and other paths as PPO resolves them; 'pretrain' is this
    run's base model (pretrained first for the tiny preset); 'calm' this run's CALM export
    (the CALM model with its identity state, trained further as it is)."""
    path = config.reflect.policy_path
    if path == CALM:
        return _calm_start(config)
    return policy_start(config, data, path, field="reflect.policy_path")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def render_report(rounds: list[dict], cultures: list[str]) -> str:
    """The round table: training reward before/after revision, improved share and pairs, the
    held-out reward (greedy), overall and per culture."""
    def cell(record: dict, key: str, digits: str = ".3f") -> str:
        value = record.get(key)
        return f"{value:{digits}}" if _finite(value) else "-"

    lines = ["# Self-prompted reflective learning", "",
             "Training prompts: reward of the initial answers, of their best revision, the "
             "share of answers a revision improves, and the pairs trained on (the round's own "
             "batch). Training prompts (greedy): a fixed sample of them, answered greedily "
             "after the round. Held-out: greedy initial answers and greedy revisions of "
             "held-out cues after the round. Round 0 is the starting model.", "",
             "| round | reward initial | reward revised | improved | pairs | sft loss | "
             "dpo loss | training prompts (greedy) | held-out initial | held-out revised |",
             "|---" * 10 + "|"]
    for r in rounds:
        lines.append(f"| {r['step']} | {cell(r, 'reward_initial')} | "
                     f"{cell(r, 'reward_revised')} | {cell(r, 'improved_share', '.0%')} | "
                     f"{r.get('pairs', '-')} | {cell(r, 'sft_loss')} | "
                     f"{cell(r, 'preference_loss')} | {cell(r, 'eval_seen_reward_initial')} | "
                     f"{cell(r, 'eval_reward_initial')} | "
                     f"{cell(r, 'eval_reward_revised')} |")
    lines += ["", "Held-out reward of the initial answers per culture:", "",
              "| round | " + " | ".join(cultures) + " |", "|---" * (len(cultures) + 1) + "|"]
    for r in rounds:
        lines.append(f"| {r['step']} | " + " | ".join(cell(r, f"eval_reward_initial/{c}")
                                                      for c in cultures) + " |")
    return "\n".join(lines) + "\n"


def _read_rounds(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def write_results(config: ExperimentConfig, data: AlignData, folder: Path) -> list[dict]:
    rounds = _read_rounds(folder / "metrics.jsonl")
    cultures = cultures_of(config, data)
    results = {"task": config.reflect.task, "reward": reward_of(config), "cultures": cultures,
               "rounds": rounds}
    (folder / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False),
                                         "utf-8")
    (folder / "report.md").write_text(render_report(rounds, cultures), "utf-8")
    return rounds


def run_reflect(config: ExperimentConfig, data: AlignData, checked: bool = False
                ) -> ReflectResult:
    """Run the reflection loop (``checked``: :func:`validate` passed already, in :func:`plan`)."""
    if not checked:
        validate(config, data)
    folder = stage_dir(config, "reflect")
    if (folder / "export" / FINISHED).is_file():
        print(f"[reflect] already finished ({folder / 'export'}); nothing to do. Use another "
              "run.name to train again.", flush=True)
        return ReflectResult(folder / "export", write_results(config, data, folder), True)
    check_reflection_plan(config)  # seconds, before minutes of a missing SFT prerequisite
    job = build_job(config, data, resolve_start(config, data))
    print(f"[reflect] policy {job.policy_path}; task {config.reflect.task} (reward "
          f"{reward_of(config)}); {len(job.prompts)} prompts over "
          f"{len(cultures_of(config, data))} cultures, {len(job.eval_prompts)} held-out",
          flush=True)
    controller = ReflectionController(config, job, reward_of(config),
                                      seen_prompts(config, job))
    try:
        controller.start()
        controller.run(StepMetrics(folder / "metrics.jsonl", config.run.name, "reflect"))
        export = controller.export()
        print(f"[reflect] exported to {export}", flush=True)
    finally:
        controller.shutdown()
    rounds = write_results(config, data, folder)
    print(f"[reflect] round table: {folder / 'report.md'}", flush=True)
    return ReflectResult(export, rounds)


def plan(config: ExperimentConfig) -> MethodPlan:
    # Reward and cultures are checked before the world is written or Ray is joined.
    validate(config, load_align_data(config, write_world=False))
    return MethodPlan(config, load_align_data(config))


def run(plan: MethodPlan) -> ReflectResult:
    return run_reflect(plan.config, plan.data, checked=True)


def summary(result: ReflectResult) -> str:
    return f"reflect: model in {result.export_dir / 'model'}"
