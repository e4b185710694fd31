"""The workflows a Ray job can run: each is a `culture-rl` command behind a
``python -m ray_jobs.<workflow>`` entrypoint, so a job and a local run share every line of code
(config loading, one-line errors and exit codes included)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass


@dataclass(frozen=True)
class Workflow:
    name: str
    command: str  # the culture-rl command the entrypoint runs
    help: str


WORKFLOWS = {w.name: w for w in (
    Workflow("quickstart", "demo", "the quickstart end to end: world, base, SFT, PPO, "
                                   "evaluation, summary, report"),
    Workflow("align_sft", "sft", "ALIGN stage 1: LoRA SFT on association norms (Ray Train + "
                                 "DeepSpeed)"),
    Workflow("align_ppo", "ppo", "ALIGN stage 2: PPO with the Spearman ranking reward"),
    Workflow("eval", "eval", "evaluate models x cultures x evaluations on the evaluation actors "
                             "and write eval.json, eval.csv and the report"),
    Workflow("sweep", "sweep", "Ray Tune sweep of SFT across cultures and hyper-parameters"),
    Workflow("calm", "calm", "CALM training on value statements (Ray Train + DeepSpeed), "
                             "held-out evaluation vs a LoRA baseline and ablations"),
    Workflow("reflect", "reflect", "CALM's self-prompted reflective learning: answer, "
                                   "reflect, revise, score, train on improving revisions"),
    Workflow("culture_spa", "spa", "CultureSPA: self-generated questions, culture-related "
                                   "instances, joint / per-culture fine-tuning, evaluation"),
)}


def entrypoint(workflow: str, config_path: str, overrides: list[str]) -> str:
    """The shell command a job runs on the cluster: ``python -m ray_jobs.<workflow> ...``."""
    args = ["python", "-m", f"ray_jobs.{workflow}", "--config", config_path, *overrides]
    return shlex.join(args)
