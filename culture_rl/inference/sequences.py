"""What a generation backend is asked for and what it returns: the sampling settings, the
token-level rollout PPO trains on, and the response mask up to the first stop token. A module of
its own because both backends (the HF one in rollout.py, the vLLM one) build rollouts and the
rollout worker chooses between them: neither backend imports the other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 96
    samples_per_prompt: int = 1
    batch_size: int = 32
    greedy: bool = False  # evaluation: argmax decoding, one sample


@dataclass
class Rollout:
    """What one worker returns for its prompts: ``samples_per_prompt`` rows per prompt, in
    prompt order (row i*n + j is sample j of prompt i)."""

    prompt_ids: torch.Tensor  # [N, P] left-padded
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor  # [N, T] right-padded with pad_token_id after EOS
    response_mask: torch.Tensor  # 1 up to and including the first EOS
    log_probs: torch.Tensor  # [N, T] sampling log-probs (after temperature / top-p)
    texts: list[str]
    pad_token_id: int


def response_mask(response_ids: torch.Tensor, eos_token_id: int | Sequence[int]) -> torch.Tensor:
    """1 for every token up to and including the first EOS, or the first of several stop ids
    (all tokens when there is none)."""
    stops = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id),
                         dtype=response_ids.dtype)
    is_eos = torch.isin(response_ids, stops)
    after_first_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0
    return (~after_first_eos).long()
