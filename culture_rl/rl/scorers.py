"""A pool of reward-scorer Ray actors.

Batches are split across the actors and scored in parallel. A scorer that dies mid-batch is
replaced and its chunk retried on the new actor, so a PPO step is never lost to a crashed
scorer; only after ``max_retries`` failures of the same chunk does the step fail, naming it.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import ray

from culture_rl.core.errors import CultureRLError
from culture_rl.rl.rewards import score_batch
from culture_rl.distributed.cluster import gather_replacing_dead


class RewardScoringError(CultureRLError):
    """A chunk kept failing after its scorer was replaced ``max_retries`` times."""


@ray.remote
class RewardScorer:
    """Scores batches with one registered reward function."""

    def __init__(self, reward: str):
        self.reward = reward

    def score(self, answers: Sequence, metas: Sequence[Mapping]) -> list[float]:
        return score_batch(self.reward, answers, metas)

    def pid(self) -> int:
        import os

        return os.getpid()


class RewardPool:
    def __init__(self, reward: str, num_scorers: int = 2, cpus_per_scorer: float = 0.5,
                 max_retries: int = 2, timeout_s: float = 300.0):
        if num_scorers < 1:
            raise ValueError("num_scorers must be >= 1")
        self.reward, self.cpus = reward, cpus_per_scorer
        self.max_retries, self.timeout_s = max_retries, timeout_s
        self.replacements = 0
        self.scorers = [self._start() for _ in range(num_scorers)]

    def _start(self):
        return RewardScorer.options(num_cpus=self.cpus).remote(self.reward)

    def score(self, answers: Sequence, metas: Sequence[Mapping]) -> list[float]:
        """Scores in input order; chunks go to the scorers in parallel."""
        if len(answers) != len(metas):
            raise ValueError(f"{len(answers)} answers but {len(metas)} metadata records")

        n = len(self.scorers)
        bounds = [(i * len(answers) // n, (i + 1) * len(answers) // n) for i in range(n)]

        def submit(index: int):
            a, b = bounds[index]
            return self.scorers[index].score.remote(answers[a:b], metas[a:b])

        def replace(index: int) -> None:
            self.scorers[index] = self._start()  # the dead actor's chunk is retried on it
            self.replacements += 1

        parts = gather_replacing_dead(submit, n, replace, timeout_s=self.timeout_s,
                                      max_retries=self.max_retries, what="reward scoring",
                                      error=RewardScoringError)
        return [score for part in parts for score in part]

    def shutdown(self) -> None:
        for scorer in self.scorers:
            ray.kill(scorer)
