"""Where evaluation's model calls run: in this process, or fanned out to Ray actors.

Every evaluation needs only two things from a model: greedy completions of prompts, and a
probability distribution over each prompt's option labels (survey answers, value labels). Both
backends below give them with the same batching code (``eval.generation``), so an evaluation
function does not know, and its unit tests run it on a real tiny model in-process, while
``culture-rl eval`` runs it on the evaluation actor group.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from culture_rl.errors import CultureRLError
from culture_rl.eval.generation import generate_answers, option_distributions


class EvaluationTimeout(CultureRLError):
    """An evaluation call on the actors outlived ``eval.call_timeout_s`` (exit code 1)."""


class Inference(Protocol):
    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        """Greedy completions (new text only)."""

    def option_distributions(self, prompts: Sequence[str],
                             labels: Sequence[Sequence[str]]) -> list[list[float]]:
        """Per prompt, a distribution over its option labels."""


class LocalInference:
    """A loaded model and tokenizer in the calling process."""

    def __init__(self, model, tokenizer, batch_size: int = 16):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        return generate_answers(self.model, self.tokenizer, list(prompts),
                                max_new_tokens=max_new_tokens, batch_size=self.batch_size)

    def option_distributions(self, prompts: Sequence[str],
                             labels: Sequence[Sequence[str]]) -> list[list[float]]:
        return option_distributions(self.model, self.tokenizer, list(prompts), list(labels),
                                    batch_size=self.batch_size * 2)


def contiguous_chunks(n_items: int, n_workers: int) -> list[tuple[int, int]]:
    """Near-equal contiguous ``(start, end)`` slices of ``n_items``, empty ones dropped."""
    bounds = [(i * n_items // n_workers, (i + 1) * n_items // n_workers)
              for i in range(n_workers)]
    return [(a, b) for a, b in bounds if b > a]


class ActorInference:
    """The evaluation actor group (``RolloutWorker`` actors, see ``rl/rollout.py``): each call is
    split into contiguous chunks, one per actor, and the answers are put back in order."""

    def __init__(self, actors: list, batch_size: int, timeout_s: float):
        self.actors, self.batch_size, self.timeout_s = actors, batch_size, timeout_s

    def _fan_out(self, method: str, what: str, items: Sequence, *extra_lists: Sequence,
                 **kwargs) -> list:
        import ray

        chunks = contiguous_chunks(len(items), len(self.actors))
        refs = [getattr(self.actors[i], method).remote(
                    list(items[a:b]), *[list(e[a:b]) for e in extra_lists], **kwargs)
                for i, (a, b) in enumerate(chunks)]
        try:
            parts = ray.get(refs, timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError:
            for ref in refs:
                ray.cancel(ref, force=True)
            raise EvaluationTimeout(f"evaluation {what} did not finish within {self.timeout_s:g} s "
                               "(eval.call_timeout_s)") from None
        return [x for part in parts for x in part]

    def load(self, model_path: str) -> None:
        import ray

        try:
            ray.get([a.load.remote(model_path) for a in self.actors], timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise EvaluationTimeout(f"loading {model_path} on the evaluation actors took longer "
                               f"than {self.timeout_s:g} s (eval.call_timeout_s)") from None

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        return self._fan_out("complete", "generation", prompts, max_new_tokens=max_new_tokens,
                             batch_size=self.batch_size)

    def option_distributions(self, prompts: Sequence[str],
                             labels: Sequence[Sequence[str]]) -> list[list[float]]:
        return self._fan_out("option_distributions", "option scoring", prompts, labels,
                             batch_size=self.batch_size * 2)
