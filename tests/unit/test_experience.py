from __future__ import annotations

import pytest
import torch

from culture_rl.rl.experience import Experience


def make(batch: int, prompt_len: int, response_len: int, offset: int = 0) -> Experience:
    ids = torch.arange(batch * response_len).reshape(batch, response_len) + 10 + offset
    return Experience(
        prompt_ids=torch.full((batch, prompt_len), 5), prompt_mask=torch.ones(batch, prompt_len),
        response_ids=ids, response_mask=torch.ones(batch, response_len),
        old_log_probs=-torch.rand(batch, response_len), scores=torch.arange(batch) + offset * 1.0,
        meta=[{"culture": "X", "i": i + offset} for i in range(batch)], pad_token_id=2)


def test_split_then_concat_round_trips():
    batch = make(5, 3, 4)
    parts = batch.split(2)
    assert [len(p) for p in parts] == [3, 2]
    joined = Experience.concat(parts)
    assert torch.equal(joined.response_ids, batch.response_ids)
    assert torch.equal(joined.old_log_probs, batch.old_log_probs)
    assert [m["i"] for m in joined.meta] == list(range(5))
    assert [len(p) for p in make(2, 1, 1).split(4)] == [1, 1]


def test_concat_pads_prompts_left_and_responses_right():
    a, b = make(1, 2, 3), make(2, 4, 1, offset=100)
    joined = Experience.concat([a, b])
    assert joined.prompt_ids.shape == (3, 4) and joined.response_ids.shape == (3, 3)
    assert joined.prompt_ids[0].tolist() == [2, 2, 5, 5]  # left padding with the pad id
    assert joined.prompt_mask[0].tolist() == [0, 0, 1, 1]
    assert joined.response_mask[1].tolist() == [1, 0, 0]  # right padding
    assert joined.response_ids[1, 1:].tolist() == [2, 2]
    assert joined.old_log_probs[1, 1:].tolist() == [0.0, 0.0]
    assert joined.scores.tolist() == [0.0, 100.0, 101.0]


def test_inconsistent_batches_are_refused():
    with pytest.raises(ValueError, match="rows"):
        Experience(torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(3, 1), torch.zeros(3, 1))
    a, b = make(1, 1, 1), make(1, 1, 1)
    b.old_log_probs = None
    with pytest.raises(ValueError, match="some parts"):
        Experience.concat([a, b])
