"""Endless, resumable batches over a prompt set (the PPO and reflection loops' data order)."""

from __future__ import annotations

import random


class PromptIterator:
    """Endless batches over the prompts: shuffled per epoch (seed + epoch), so the position
    (epoch, index) is the whole state and a resumed run neither replays nor skips a prompt."""

    def __init__(self, prompts: list[dict], batch_size: int, seed: int):
        if not prompts:
            raise ValueError("no prompts to iterate over")
        self.prompts, self.batch_size, self.seed = prompts, batch_size, seed
        self.epoch, self.index = 0, 0
        self._order = self._shuffle(0)

    def _shuffle(self, epoch: int) -> list[int]:
        order = list(range(len(self.prompts)))
        random.Random(self.seed * 7919 + epoch).shuffle(order)
        return order

    def next_batch(self) -> list[dict]:
        batch = []
        while len(batch) < self.batch_size:
            if self.index == len(self._order):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._shuffle(self.epoch)
            batch.append(self.prompts[self._order[self.index]])
            self.index += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._shuffle(self.epoch)
