"""Seconds per phase of an online loop's step (rollout, reward, train, sync, ...)."""

from __future__ import annotations

import time


class PhaseTimer:
    """``lap(name)`` closes the phase that just ran; ``seconds`` holds ``seconds_<name>``,
    summed over the laps of one name (a step that draws again generates twice)."""

    def __init__(self) -> None:
        self.started = self._clock = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        key = f"seconds_{name}"
        self.seconds[key] = self.seconds.get(key, 0.0) + now - self._clock
        self._clock = now

    def total(self) -> float:
        return time.perf_counter() - self.started
