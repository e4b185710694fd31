"""The reward-scorer actor pool on the session's real Ray: parallel scoring, and a scorer
killed mid-step is replaced without losing the step."""

from __future__ import annotations

import os
import signal

import pytest
import ray

from culture_rl.rl.rewards import score_batch
from culture_rl.rl.scorers import RewardPool

pytestmark = pytest.mark.integration

ORDER = ["dog", "mouse", "milk", "fish"]
ANSWERS = ["Final Ranking\n1: dog\n2: mouse\n3: milk\n4: fish",
           "Final Ranking\n1: fish\n2: milk\n3: mouse\n4: dog", "no idea", "dog, milk"] * 5
METAS = [{"human_order": ORDER, "culture": "X"}] * len(ANSWERS)


def test_pool_scores_like_the_plain_function(ray_session):
    pool = RewardPool("ranking_spearman", num_scorers=2, cpus_per_scorer=0)
    try:
        assert pool.score(ANSWERS, METAS) == score_batch("ranking_spearman", ANSWERS, METAS)
    finally:
        pool.shutdown()


def test_killed_scorer_is_replaced_and_the_batch_completes(ray_session):
    pool = RewardPool("ranking_spearman", num_scorers=2, cpus_per_scorer=0)
    try:
        victim = ray.get(pool.scorers[0].pid.remote())
        os.kill(victim, signal.SIGKILL)  # a real process death, not a Python exception
        assert pool.score(ANSWERS, METAS) == score_batch("ranking_spearman", ANSWERS, METAS)
        assert pool.replacements == 1
        assert ray.get(pool.scorers[0].pid.remote()) != victim
    finally:
        pool.shutdown()
