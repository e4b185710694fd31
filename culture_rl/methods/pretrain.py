"""The tiny base model as a method of its own (``culture-rl pretrain``): all weights trained
with the plain LM loss on the synthetic world's corpus, the culturally biased "vanilla" model
that ALIGN, CALM, CultureSPA and reflection start from with the tiny preset. It is one more
training stage, so it shares :func:`~culture_rl.methods.align.sft.run` and ``summary``."""

from __future__ import annotations

from culture_rl.config import ExperimentConfig
from culture_rl.data.align_data import load_align_data
from culture_rl.methods import MethodPlan
from culture_rl.methods.align.sft import build_pretrain_job, run, summary

__all__ = ["plan", "run", "summary"]


def plan(config: ExperimentConfig) -> MethodPlan:
    """The corpus loaded and the pretraining job built before any Ray work."""
    data = load_align_data(config)
    return MethodPlan(config, data, build_pretrain_job(config, data))
