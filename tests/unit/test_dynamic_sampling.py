"""DAPO's dynamic sampling: which groups are kept, and the batch they make."""

from __future__ import annotations

import torch

from culture_rl.rl.dynamic_sampling import GroupFilter, groups_with_spread
from culture_rl.rl.experience import Experience


def _draw(scores: list[float], tag: str, width: int) -> tuple[Experience, list[str], list]:
    rows = len(scores)
    exp = Experience(prompt_ids=torch.ones(rows, 2, dtype=torch.long),
                     prompt_mask=torch.ones(rows, 2, dtype=torch.long),
                     response_ids=torch.ones(rows, width, dtype=torch.long),
                     response_mask=torch.ones(rows, width, dtype=torch.long),
                     old_log_probs=torch.zeros(rows, width),
                     meta=[{"group": i // 2, "tag": tag} for i in range(rows)])
    return exp, [f"{tag}{i}" for i in range(rows)], scores


def test_a_group_has_a_spread_when_its_scores_differ():
    assert groups_with_spread([1.0, 1.0, 0.0, 1.0, -1.0, -1.0], 2) == [False, True, False]


def test_groups_with_a_spread_fill_the_step_first_and_are_renumbered():
    groups = GroupFilter(need=2, samples_per_prompt=2)
    groups.add(*_draw([1.0, 1.0, 0.0, 1.0], "a", width=3))  # group a0 flat, a1 spread
    assert not groups.full
    groups.add(*_draw([0.5, 0.0, 2.0, 2.0], "b", width=5))  # b0 spread, b1 flat
    assert groups.full
    exp, texts, scores, stats = groups.batch()
    assert texts == ["a2", "a3", "b0", "b1"] and scores == [0.0, 1.0, 0.5, 0.0]
    assert [m["group"] for m in exp.meta] == [0, 0, 1, 1]
    assert exp.response_ids.shape == (4, 5)  # padded to the widest draw
    assert stats == {"dynamic_sampling_draws": 2, "dynamic_sampling_spread_share": 1.0}


def test_short_of_spread_the_set_aside_groups_keep_the_step_full():
    groups = GroupFilter(need=2, samples_per_prompt=2)
    groups.add(*_draw([1.0, 1.0, 0.0, 1.0], "a", width=3))
    exp, texts, _, stats = groups.batch()
    assert texts == ["a2", "a3", "a0", "a1"] and len(exp) == 4
    assert stats["dynamic_sampling_spread_share"] == 0.5
