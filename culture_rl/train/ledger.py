"""A ledger of which training samples each optimizer step consumed, per rank.

Used to prove that recovery from a lost worker neither replays nor skips data: each training
forward pass (the model in train mode) records a short hash of every row's tokens, and at the end
of each optimizer step the rank appends ``{"step", "pid", "samples"}`` to
``<stage dir>/samples/rank<r>.jsonl``. On resume from a checkpoint the records past the
checkpoint's step are dropped first (those steps are trained again), so the finished ledger holds
each step once: its multiset of samples must equal an uninterrupted run's with the same seed.

The hook sits on the decoder stack (``model.model`` for Llama-style models) because peft calls
the outer model's ``forward`` directly, which bypasses hooks on the outer module.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from transformers import TrainerCallback


def row_hash(token_ids) -> str:
    """12 hex digits of the row's token ids (padding excluded by the caller)."""
    return hashlib.blake2b(",".join(map(str, token_ids)).encode(), digest_size=6).hexdigest()


def ledger_path(stage_dir: str | Path, rank: int) -> Path:
    return Path(stage_dir) / "samples" / f"rank{rank}.jsonl"


def read_ledger(stage_dir: str | Path) -> dict[int, list[dict]]:
    """rank -> its records, in file order."""
    folder = Path(stage_dir) / "samples"
    ledgers = {}
    for path in sorted(folder.glob("rank*.jsonl")):
        ledgers[int(path.stem[4:])] = [json.loads(line) for line in
                                       path.read_text("utf-8").splitlines() if line.strip()]
    return ledgers


def _decoder(model):
    """The innermost module that is *called* (not .forward()-ed) with input_ids."""
    for candidate in (model, getattr(model, "base_model", None)):
        inner = getattr(candidate, "model", None)
        while inner is not None and hasattr(inner, "model") and not hasattr(inner, "layers"):
            inner = inner.model
        if inner is not None and hasattr(inner, "layers"):
            return inner
    raise ValueError(f"cannot find the decoder stack of {type(model).__name__} to hook")


class SampleLedger(TrainerCallback):
    def __init__(self, model, stage_dir: str | Path, rank: int):
        self.path = ledger_path(stage_dir, rank)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.pending: list[str] = []
        self.decoder = _decoder(model)
        self.handle = self.decoder.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        if not module.training:  # evaluation and generation are not training samples
            return
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            return
        mask = kwargs.get("attention_mask")
        for i, row in enumerate(input_ids.tolist()):
            if mask is not None and mask.dim() == 2:
                row = [t for t, m in zip(row, mask[i].tolist()) if m]
            self.pending.append(row_hash(row))

    def on_train_begin(self, args, state, control, **kwargs):
        self.pending = []
        # Forget what an earlier attempt logged past the step this one starts from: those
        # steps are trained again. Also when it starts from 0: a worker group lost before Ray
        # Train registered its first checkpoint restarts from scratch.
        if self.path.is_file():
            kept = [line for line in self.path.read_text("utf-8").splitlines()
                    if line.strip() and json.loads(line)["step"] <= state.global_step]
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in kept), "utf-8")
            tmp.replace(self.path)

    def on_step_end(self, args, state, control, **kwargs):
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": state.global_step, "pid": os.getpid(),
                                     "samples": self.pending}) + "\n")
        self.pending = []

    def on_train_end(self, args, state, control, **kwargs):
        self.handle.remove()
