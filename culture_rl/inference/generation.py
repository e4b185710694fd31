"""Batched inference helpers shared by training-time evaluation and the evaluation harness.

Greedy association answers come from ``generate`` on left-padded batches (so every prompt ends at
the same position and the KV cache is used); survey answers are option *distributions* read from
the log-probabilities of each option label after the prompt, never from sampled text.
"""

from __future__ import annotations

from typing import Sequence

import torch

from culture_rl.models.chat import AnswerBegun, Prompt, answer_text, chat_prompts, stop_token_ids


def _right_padded(rows: Sequence[Sequence[int]], pad_id: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows as one right-padded id tensor and its attention mask."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        attention[i, :len(row)] = 1
    return input_ids, attention


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: Sequence[Prompt], *, max_new_tokens: int = 40,
                     batch_size: int = 16, synced_gpus: bool = False, sample: bool = False,
                     temperature: float = 1.0) -> list[str]:
    """Greedy (or, with ``sample``, sampled) completions of ``prompts`` (new text only,
    special tokens dropped). A chat model reads each prompt through its chat template and stops
    at its end-of-turn (culture_rl.models.chat).

    ``synced_gpus`` must be true under ZeRO-3, where every rank has to join every forward pass
    (their shards are gathered on the fly): ranks then keep stepping until all have finished.
    """
    was_training = model.training
    model.eval()
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    stops = stop_token_ids(tokenizer, model)
    answers: list[str] = []
    try:
        for batch in _batches(chat_prompts(tokenizer, prompts), batch_size):
            encoded = tokenizer(batch, return_tensors="pt", padding=True,
                                add_special_tokens=False).to(device)
            decoding = ({"do_sample": True, "temperature": temperature, "top_k": 0} if sample
                        else {"do_sample": False})
            output = model.generate(**encoded, max_new_tokens=max_new_tokens, **decoding,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=stops,
                                    synced_gpus=synced_gpus)
            new_tokens = output[:, encoded["input_ids"].shape[1]:]
            answers.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return answers


@torch.no_grad()
def continuation_logprobs(model, tokenizer, prompt_continuations: Sequence[tuple[str, str]], *,
                          batch_size: int = 32) -> list[float]:
    """Sum of token log-probabilities of each continuation given its prompt.

    Tokenised as prompt ids + continuation ids (not the joined string), so the continuation's
    tokens are exactly the ones scored even where BPE would merge across the boundary.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    scores: list[float] = []
    try:
        for batch in _batches(list(prompt_continuations), batch_size):
            rows, spans = [], []
            for prompt, continuation in batch:
                prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
                cont_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
                rows.append(prompt_ids + cont_ids)
                spans.append((len(prompt_ids), len(prompt_ids) + len(cont_ids)))
            input_ids, attention = _right_padded(rows, pad_id)
            logits = model(input_ids=input_ids.to(device),
                           attention_mask=attention.to(device)).logits.float()
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
            targets = input_ids[:, 1:].to(device)
            token_scores = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            for i, (start, end) in enumerate(spans):
                # logits at position t predict token t+1, hence the shift by one
                scores.append(float(token_scores[i, start - 1:end - 1].sum()))
    finally:
        model.train(was_training)
    return scores


def option_distributions(model, tokenizer, prompts: Sequence[Prompt],
                         labels: Sequence[Sequence[str]], *, batch_size: int = 32
                         ) -> list[list[float]]:
    """For each prompt, a probability distribution over its option labels (softmax of the
    labels' log-probabilities, i.e. renormalised over the offered options). A chat model reads
    the prompt through its template and each label as the start of its answer, or after what
    an :class:`AnswerBegun` has written of it."""
    pairs = [(text, answer_text(tokenizer, label, isinstance(prompt, AnswerBegun)))
             for prompt, text, options in zip(prompts, chat_prompts(tokenizer, prompts), labels)
             for label in options]
    flat = continuation_logprobs(model, tokenizer, pairs, batch_size=batch_size)
    distributions, offset = [], 0
    for options in labels:
        scores = torch.tensor(flat[offset:offset + len(options)])
        distributions.append(torch.softmax(scores, dim=0).tolist())
        offset += len(options)
    return distributions


@torch.no_grad()
def mean_token_nll(model, tokenizer, texts: Sequence[str], *, batch_size: int = 16
                   ) -> list[float]:
    """Per text, the mean negative log-likelihood of its tokens after the first (the language
    modelling loss a trainer reports), right-padded batches."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    losses: list[float] = []
    try:
        for batch in _batches(list(texts), batch_size):
            rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in batch]
            input_ids, attention = _right_padded(rows, tokenizer.pad_token_id)
            logits = model(input_ids=input_ids.to(device),
                           attention_mask=attention.to(device)).logits.float()
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
            targets = input_ids[:, 1:].to(device)
            token = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            mask = attention[:, 1:].to(device).float()
            per_text = -(token * mask).sum(1) / mask.sum(1).clamp(min=1)
            losses.extend(per_text.tolist())
    finally:
        model.train(was_training)
    return losses
