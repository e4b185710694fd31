"""What the evaluation cache key covers: scoring settings and batch composition, not placement."""

from __future__ import annotations

from culture_rl.config import load_config
from culture_rl.eval.harness import cache_key


def key(*overrides: str) -> str:
    return cache_key(load_config(None, list(overrides)), ["associations"], "/nowhere/model")


def test_batching_changes_the_key_placement_does_not():
    base = key()
    assert key("eval.batch_size=3") != base  # another batching can tip a greedy answer
    assert key("eval.workers=3") != base
    assert key("eval.max_new_tokens=7") != base
    assert key("eval.call_timeout_s=5") == base
    assert key("eval.cpus_per_worker=2") == base
