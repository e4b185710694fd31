"""Reward functions as plain functions registered by name.

A reward function takes the generated answer text and the sample's metadata (what the prompt
builder put there: ``human_order`` for ranking prompts, ``human`` for association prompts,
``target`` distributions for survey prompts) and returns a float. The Ray ``RewardScorer`` pool
calls them by name; a new reward is one decorated function.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from culture_rl.eval.metrics import js_distance, precision_at_k, spearman_ranking_reward
from culture_rl.rl.registry import Registry

REWARD_FUNCTIONS = Registry("reward")
register_reward = REWARD_FUNCTIONS.register
get_reward = REWARD_FUNCTIONS.lookup


def _require(meta: Mapping, key: str, reward: str):
    if key not in meta:
        raise KeyError(f"reward {reward!r} needs {key!r} in the sample's metadata")
    return meta[key]


@register_reward("ranking_spearman")
def ranking_spearman(answer: str, meta: Mapping) -> float:
    """ALIGN: Spearman rho between the model's ranking and the human frequency order; -1 when
    the answer cannot be parsed into a ranking of the given words."""
    return spearman_ranking_reward(answer, list(_require(meta, "human_order",
                                                         "ranking_spearman")))


@register_reward("association_overlap")
def association_overlap(answer: str, meta: Mapping) -> float:
    """P@k of the answer's associations against the human associations (k from meta, 5)."""
    return precision_at_k(answer, _require(meta, "human", "association_overlap"),
                          int(meta.get("k", 5)))


@register_reward("survey_alignment")
def survey_alignment(answer: Sequence[float], meta: Mapping) -> float:
    """Negative JS distance between the model's answer distribution and the target culture's
    (0 is perfect, -1 the worst)."""
    return -js_distance(answer, _require(meta, "target", "survey_alignment"))


def score_batch(name: str, answers: Sequence, metas: Sequence[Mapping]) -> list[float]:
    """Score a batch with one registered reward (what a scorer actor runs)."""
    if len(answers) != len(metas):
        raise ValueError(f"{len(answers)} answers but {len(metas)} metadata records")
    reward = get_reward(name)
    return [float(reward(answer, meta)) for answer, meta in zip(answers, metas)]


def mean_by_culture(rewards: Sequence[float], metas: Sequence[Mapping]) -> dict[str, float]:
    """Mean reward per ``meta['culture']`` (samples without one count under 'all')."""
    sums: dict[str, list[float]] = {}
    for reward, meta in zip(rewards, metas):
        sums.setdefault(str(meta.get("culture", "all")), []).append(reward)
    return {culture: sum(values) / len(values) for culture, values in sums.items()}
