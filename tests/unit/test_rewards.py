"""Reward functions on good and malformed answers."""

from __future__ import annotations

import pytest

from culture_rl.rl import rewards

ORDER = ["dog", "mouse", "milk", "fish"]


def test_ranking_spearman_good_reversed_and_malformed():
    meta = {"human_order": ORDER}
    perfect = "Thinking...\nFinal Ranking\n1: dog\n2: mouse\n3: milk\n4: fish"
    reverse = "Final Ranking\n1: fish\n2: milk\n3: mouse\n4: dog"
    assert rewards.ranking_spearman(perfect, meta) == pytest.approx(1.0)
    assert rewards.ranking_spearman(reverse, meta) == pytest.approx(-1.0)
    assert rewards.ranking_spearman("I would rather not say.", meta) == -1.0
    assert rewards.ranking_spearman("", meta) == -1.0
    partial = rewards.ranking_spearman("dog, mouse", meta)  # missing words take the worst rank
    assert -1.0 < partial < 1.0


def test_association_overlap():
    meta = {"human": ["dog", "mouse", "milk"], "k": 2}
    assert rewards.association_overlap(" dog, cheese", meta) == pytest.approx(0.5)
    assert rewards.association_overlap("", meta) == 0.0


def test_survey_alignment():
    assert rewards.survey_alignment([0.5, 0.5], {"target": [0.5, 0.5]}) == pytest.approx(0.0)
    assert rewards.survey_alignment([1.0, 0.0], {"target": [0.0, 1.0]}) == pytest.approx(-1.0)


def test_registry_batch_and_culture_means():
    assert {"ranking_spearman", "association_overlap", "survey_alignment"} <= set(
        rewards.REWARD_FUNCTIONS)
    metas = [{"human": ["a"], "k": 1, "culture": "X"}, {"human": ["b"], "k": 1, "culture": "Y"},
             {"human": ["c"], "k": 1, "culture": "X"}]
    scores = rewards.score_batch("association_overlap", ["a", "a", "z"], metas)
    assert scores == [1.0, 0.0, 0.0]
    assert rewards.mean_by_culture(scores, metas) == {"X": 0.5, "Y": 0.0}
    with pytest.raises(KeyError, match="registered"):
        rewards.get_reward("nope")
    with pytest.raises(KeyError, match="human_order"):
        rewards.ranking_spearman("a, b", {})
    with pytest.raises(ValueError, match="metadata"):
        rewards.score_batch("association_overlap", ["a"], [])
