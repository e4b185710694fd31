"""DAPO's dynamic sampling (Yu et al. 2025): a prompt whose samples all scored the same gives
every one of them a zero group-relative advantage, so it only dilutes the batch. Such groups
are set aside and more prompts are drawn until ``rollout_batch_size`` groups have a spread,
at most ``ppo.dynamic_sampling_max_draws`` batches a step; short of that, the step is filled
with the groups set aside (zero advantage, as without the filter), so every step keeps the
batch plan's size. Pure: the controller draws, this keeps count."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from culture_rl.rl.experience import Experience


def groups_with_spread(scores: Sequence[float], samples_per_prompt: int) -> list[bool]:
    """Per group (rows ``i * n`` to ``i * n + n - 1``): whether its scores differ."""
    n = samples_per_prompt
    return [len(set(scores[i:i + n])) > 1 for i in range(0, len(scores), n)]


@dataclass
class GroupFilter:
    need: int                # groups a step trains on (ppo.rollout_batch_size)
    samples_per_prompt: int
    kept: list = field(default_factory=list)   # (experience, texts, scores) of a group
    spare: list = field(default_factory=list)  # the same, for groups without a spread
    draws: int = 0

    def add(self, exp: Experience, texts: list[str], scores: list[float]) -> None:
        n = self.samples_per_prompt
        for g, spread in enumerate(groups_with_spread(scores, n)):
            rows = slice(g * n, (g + 1) * n)
            (self.kept if spread else self.spare).append(
                (exp.select(rows), texts[rows], list(scores[rows])))
        self.draws += 1

    @property
    def full(self) -> bool:
        return len(self.kept) >= self.need

    def batch(self) -> tuple[Experience, list[str], list[float], dict]:
        """The step's batch: the groups with a spread first, then the spare ones, ``need`` in
        all, renumbered ``group`` 0..need-1; and how it went (metrics)."""
        chosen = (self.kept + self.spare)[:self.need]
        if len(chosen) < self.need:
            raise ValueError(f"{len(chosen)} groups drawn, {self.need} needed")
        exp = Experience.concat([part for part, _, _ in chosen])
        exp.meta = [{**m, "group": i // self.samples_per_prompt} for i, m in enumerate(exp.meta)]
        texts = [t for _, group_texts, _ in chosen for t in group_texts]
        scores = [s for _, _, group_scores in chosen for s in group_scores]
        stats = {"dynamic_sampling_draws": self.draws,
                 "dynamic_sampling_spread_share": min(len(self.kept), self.need) / self.need}
        return exp, texts, scores, stats
