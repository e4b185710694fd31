"""One batch type for the PPO loop, split and concatenated for fan-out.

Prompts are left-padded (they end where generation starts), responses right-padded (they start
there); per-token tensors are ``[B, T]`` over response positions. Optional fields are filled in
as the step goes: rollout (ids, old log-probs) -> reward (scores) -> reference/critic
(ref log-probs, values) -> advantages (rewards, advantages, returns).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

PER_TOKEN = ("old_log_probs", "ref_log_probs", "values", "rewards", "advantages", "returns")


@dataclass
class Experience:
    prompt_ids: torch.Tensor  # [B, P], left-padded
    prompt_mask: torch.Tensor  # [B, P]
    response_ids: torch.Tensor  # [B, T], right-padded
    response_mask: torch.Tensor  # [B, T]
    old_log_probs: torch.Tensor | None = None
    ref_log_probs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    rewards: torch.Tensor | None = None  # token-level, after the KL penalty
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    scores: torch.Tensor | None = None  # [B], the reward function's sequence score
    meta: list[dict] = field(default_factory=list)  # per sample: culture, cue, prompt group...
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        size = self.prompt_ids.shape[0]
        for name, value in self._tensors().items():
            if value.shape[0] != size:
                raise ValueError(f"{name} has {value.shape[0]} rows, prompt_ids has {size}")
        if self.meta and len(self.meta) != size:
            raise ValueError(f"meta has {len(self.meta)} records for {size} samples")

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)}

    def select(self, rows: slice) -> "Experience":
        changes = {name: value[rows] for name, value in self._tensors().items()}
        return dataclasses.replace(self, **changes, meta=self.meta[rows] if self.meta else [])

    def take(self, rows: torch.Tensor | list[int]) -> "Experience":
        """The given rows, in the given order (a shuffle for PPO mini batches)."""
        index = torch.as_tensor(rows, dtype=torch.long)
        changes = {name: value[index] for name, value in self._tensors().items()}
        meta = [self.meta[i] for i in index.tolist()] if self.meta else []
        return dataclasses.replace(self, **changes, meta=meta)

    def split(self, parts: int) -> list["Experience"]:
        """``parts`` near-equal contiguous chunks (sizes differ by at most one), for fan-out to
        an actor group; empty chunks are not returned."""
        if parts < 1:
            raise ValueError("parts must be >= 1")
        size, extra = divmod(len(self), parts)
        chunks, start = [], 0
        for index in range(parts):
            stop = start + size + (1 if index < extra else 0)
            if stop > start:
                chunks.append(self.select(slice(start, stop)))
            start = stop
        return chunks

    @staticmethod
    def concat(parts: list["Experience"]) -> "Experience":
        """Inverse of split; pads prompts on the left and responses on the right to the widest
        part, so batches from different actors (different lengths) join."""
        if not parts:
            raise ValueError("nothing to concatenate")
        first = parts[0]
        prompt_width = max(p.prompt_ids.shape[1] for p in parts)
        response_width = max(p.response_ids.shape[1] for p in parts)
        fields: dict = {}
        for name in ("prompt_ids", "prompt_mask"):
            fill = first.pad_token_id if name == "prompt_ids" else 0
            fields[name] = torch.cat([_pad(getattr(p, name), prompt_width, fill, left=True)
                                      for p in parts])
        for name in ("response_ids", "response_mask") + PER_TOKEN:
            present = [getattr(p, name) is not None for p in parts]
            if not any(present):
                continue
            if not all(present):
                raise ValueError(f"{name} is set on some parts and not on others")
            fill = first.pad_token_id if name == "response_ids" else 0
            fields[name] = torch.cat([_pad(getattr(p, name), response_width, fill, left=False)
                                      for p in parts])
        if any(p.scores is not None for p in parts):
            fields["scores"] = torch.cat([p.scores for p in parts])
        meta = [record for p in parts for record in p.meta]
        return Experience(**fields, meta=meta, pad_token_id=first.pad_token_id)


def _pad(tensor: torch.Tensor, width: int, fill, left: bool) -> torch.Tensor:
    missing = width - tensor.shape[1]
    if missing == 0:
        return tensor
    padding = torch.full((tensor.shape[0], missing), fill, dtype=tensor.dtype,
                         device=tensor.device)
    return torch.cat([padding, tensor] if left else [tensor, padding], dim=1)
