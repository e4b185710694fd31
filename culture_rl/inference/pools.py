"""Where evaluation's model calls run: in this process, or fanned out to Ray actors.

Every evaluation needs only two things from a model: greedy completions of prompts, and a
probability distribution over each prompt's option labels (survey answers, value labels). Both
backends below give them with the same batching code (``eval.generation``), so an evaluation
function does not know, and its unit tests run it on a real tiny model in-process, while
``culture-rl eval`` runs it on the evaluation actor group.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from culture_rl.core.errors import CultureRLError
from culture_rl.inference.generation import generate_answers, option_distributions, mean_token_nll
from culture_rl.distributed.cluster import gather_replacing_dead
from culture_rl.models.adapters import routed


class EvaluationError(CultureRLError):
    """An evaluation call on the actors outlived ``eval.call_timeout_s``, or an actor kept
    dying (exit code 1)."""


class Inference(Protocol):
    """``routes`` (optional) names each prompt's culture: a model that is a per-culture
    adapter set (``models/adapters.py``) serves it with that culture's adapter."""

    def generate(self, prompts: Sequence[str], max_new_tokens: int,
                 routes: Sequence[str | None] | None = None, sample: bool = False,
                 temperature: float = 1.0, seed: int = 0) -> list[str]:
        """Greedy (or sampled) completions, new text only."""

    def option_distributions(self, prompts: Sequence[str], labels: Sequence[Sequence[str]],
                             routes: Sequence[str | None] | None = None) -> list[list[float]]:
        """Per prompt, a distribution over its option labels."""

    def lm_losses(self, texts: Sequence[str], routes: Sequence[str | None] | None = None
                  ) -> list[float]:
        """Per text, the mean token negative log-likelihood."""


class LocalInference:
    """A loaded model and tokenizer in the calling process."""

    def __init__(self, model, tokenizer, batch_size: int = 16):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def _routed(self, routes, run):
        if routes is None:
            return run(None)

        return routed(self.model, routes, run)

    def generate(self, prompts: Sequence[str], max_new_tokens: int, routes=None,
                 sample: bool = False, temperature: float = 1.0, seed: int = 0) -> list[str]:
        import torch

        torch.manual_seed(seed)

        def run(indices):
            chosen = list(prompts) if indices is None else [prompts[i] for i in indices]
            return generate_answers(self.model, self.tokenizer, chosen,
                                    max_new_tokens=max_new_tokens, batch_size=self.batch_size,
                                    sample=sample, temperature=temperature)
        return self._routed(routes, run)

    def option_distributions(self, prompts: Sequence[str], labels: Sequence[Sequence[str]],
                             routes=None) -> list[list[float]]:
        def run(indices):
            chosen = range(len(prompts)) if indices is None else indices
            return option_distributions(self.model, self.tokenizer,
                                        [prompts[i] for i in chosen],
                                        [labels[i] for i in chosen],
                                        batch_size=self.batch_size * 2)
        return self._routed(routes, run)

    def lm_losses(self, texts: Sequence[str], routes=None) -> list[float]:
        def run(indices):
            chosen = list(texts) if indices is None else [texts[i] for i in indices]
            return mean_token_nll(self.model, self.tokenizer, chosen, batch_size=self.batch_size)
        return self._routed(routes, run)


def contiguous_chunks(n_items: int, n_workers: int) -> list[tuple[int, int]]:
    """Near-equal contiguous ``(start, end)`` slices of ``n_items``, empty ones dropped."""
    bounds = [(i * n_items // n_workers, (i + 1) * n_items // n_workers)
              for i in range(n_workers)]
    return [(a, b) for a, b in bounds if b > a]


class ActorInference:
    """The evaluation actor group (``RolloutWorker`` actors, see ``inference/rollout.py``, on an
    :class:`~culture_rl.distributed.cluster.ActorGroup`): each call is split into contiguous
    chunks, one per actor, and the answers are put back in order. An actor that dies is
    restarted on its bundle, loads the model under evaluation and its chunk is retried."""

    def __init__(self, group, batch_size: int, timeout_s: float, model_path: str):
        self.group, self.batch_size, self.timeout_s = group, batch_size, timeout_s
        self.model_path = model_path  # what the actors serve now
        self.replacements = 0

    def _fan_out(self, method: str, what: str, items: Sequence, *extra_lists: Sequence,
                 routes: Sequence | None = None, seed: int | None = None, **kwargs) -> list:
        chunks = contiguous_chunks(len(items), len(self.group))

        def submit(i: int):
            a, b = chunks[i]
            per_chunk = dict(kwargs)
            if routes is not None:
                per_chunk["routes"] = list(routes[a:b])
            if seed is not None:
                per_chunk["seed"] = seed + i  # each actor samples its own stream
            return getattr(self.group.actors[i], method).remote(
                list(items[a:b]), *[list(e[a:b]) for e in extra_lists], **per_chunk)

        parts = gather_replacing_dead(submit, len(chunks), self._replace,
                                      timeout_s=self.timeout_s, max_retries=2,
                                      what=f"evaluation {what} (eval.call_timeout_s)",
                                      error=EvaluationError)
        return [x for part in parts for x in part]

    def _replace(self, rank: int) -> None:
        import ray

        print(f"[eval] evaluation actor {rank} died; starting a replacement", flush=True)
        actor = self.group.replace(rank)
        self.replacements += 1
        ray.get(actor.load.remote(self.model_path), timeout=self.timeout_s)

    def load(self, model_path: str) -> None:
        import ray

        try:
            ray.get([a.load.remote(model_path) for a in self.group.actors],
                    timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise EvaluationError(f"loading {model_path} on the evaluation actors took longer "
                                  f"than {self.timeout_s:g} s (eval.call_timeout_s)") from None
        self.model_path = model_path

    def generate(self, prompts: Sequence[str], max_new_tokens: int, routes=None,
                 sample: bool = False, temperature: float = 1.0, seed: int = 0) -> list[str]:
        return self._fan_out("complete", "generation", prompts, routes=routes, seed=seed,
                             max_new_tokens=max_new_tokens, batch_size=self.batch_size,
                             sample=sample, temperature=temperature)

    def option_distributions(self, prompts: Sequence[str], labels: Sequence[Sequence[str]],
                             routes=None) -> list[list[float]]:
        return self._fan_out("option_distributions", "option scoring", prompts, labels,
                             routes=routes, batch_size=self.batch_size * 2)

    def lm_losses(self, texts: Sequence[str], routes=None) -> list[float]:
        return self._fan_out("lm_losses", "language-modelling loss", texts, routes=routes,
                             batch_size=self.batch_size)
