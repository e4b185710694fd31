"""Stages 4-5 of CultureSPA, pure: which instances are culture-related, and the training rows.

A question is *culture-related* for culture X when the model's culture-aware answer (prompted
"you are a person from X") differs from its culture-unaware one: the chosen option differs, or
the two answer distributions are further apart than a JS-distance threshold. Those instances
become fine-tuning data, culture-joint (one model, the culture named in the prompt) or
culture-specific (one adapter per culture, trained on that culture's instances).
"""

from __future__ import annotations

import math
import random
from typing import Mapping, Sequence

from culture_rl.data import prompts
from culture_rl.eval.metrics import js_distance


def argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def culture_related(unaware: Sequence[float], aware: Sequence[float],
                    js_threshold: float) -> bool:
    """True when the aware answer picks another option, or its distribution moved further than
    ``js_threshold`` (JS distance, base 2) from the unaware one."""
    return argmax(unaware) != argmax(aware) or js_distance(unaware, aware) > js_threshold


def related_instances(questions: Sequence[Mapping], unaware: Sequence[Sequence[float]],
                      aware: Mapping[str, Sequence[Sequence[float]]], js_threshold: float
                      ) -> tuple[list[dict], dict]:
    """The culture-related (question, culture) instances with their aware answer, and
    statistics: per culture and per topic, questions seen and related."""
    instances = []
    stats: dict = {"by_culture": {}, "by_topic": {}}
    for culture, dists in aware.items():
        for q, before, after in zip(questions, unaware, dists):
            related = culture_related(before, after, js_threshold)
            for key, name in (("by_culture", culture), ("by_topic", q["topic"])):
                entry = stats[key].setdefault(name, {"questions": 0, "related": 0})
                entry["questions"] += 1
                entry["related"] += int(related)
            if related:
                instances.append({**q, "culture": culture, "answer": argmax(after),
                                  "aware": list(after), "unaware": list(before),
                                  "js": js_distance(before, after)})
    stats["related"] = len(instances)
    return instances, stats


def target_distribution(aware: Sequence[float], temperature: float = 1.0) -> list[float]:
    """The distribution an instance's answers follow: the culture-aware one at
    ``temperature`` (``aware^(1/t)``, renormalised: <1 sharpens it toward its mode, 1 leaves it
    as the model gave it)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if temperature == 1:
        return list(aware)
    tiny = 1e-12
    logits = [math.log(max(a, tiny)) / temperature for a in aware]
    top = max(logits)
    weights = [math.exp(x - top) for x in logits]
    total = sum(weights)
    return [w / total for w in weights]


def proportional_counts(weights: Sequence[float], total: int) -> list[int]:
    """``total`` rows shared among the options in proportion to ``weights`` (largest remainder:
    the counts add up to ``total`` and each is within one of ``total * weight``) — the draws
    of ``sampled`` without their noise."""
    mass = sum(weights)
    exact = [total * w / mass for w in weights]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[:total - sum(counts)]:
        counts[i] += 1
    return counts


def answer_labels(instance: Mapping, target: str, samples: int, rng: random.Random,
                  temperature: float = 1.0) -> list[int]:
    """The option indices an instance is trained on: its aware answer once (``argmax``), or
    ``samples`` draws from its target distribution (``sampled``; see
    :func:`target_distribution`), or ``samples`` answers shared in proportion to it
    (``proportional``), so the tuned model learns the culture's spread of answers rather than
    only its mode (a one-hot answer is far, in JS distance, from any survey population's
    distribution)."""
    if target == "argmax":
        return [instance["answer"]]
    if target in ("sampled", "proportional"):
        weights = target_distribution(instance["aware"], temperature)
        if target == "sampled":
            return rng.choices(range(len(weights)), weights=weights, k=samples)
        return [i for i, n in enumerate(proportional_counts(weights, samples)) for _ in range(n)]
    raise ValueError(f"target must be 'argmax', 'sampled' or 'proportional', got {target!r}")


def training_rows(instances: Sequence[Mapping], mode: str, language: str = "en",
                  culture_in_prompt: bool = True, target: str = "argmax", samples: int = 1,
                  seed: int = 0, temperature: float = 1.0) -> dict[str, list[dict]]:
    """Prompt/completion rows: ``joint`` -> {"joint": rows of every culture, the culture named
    in the prompt}; ``specific`` -> {culture: its rows} (the culture named in the prompt only
    when ``culture_in_prompt``: the adapter itself is the culture)."""
    if mode not in ("joint", "specific"):
        raise ValueError(f"mode must be 'joint' or 'specific', got {mode!r}")
    rng = random.Random(seed)
    rows: dict[str, list[dict]] = {}
    for inst in instances:
        survey = prompts.survey_prompt(inst["question"], inst["options"], language)
        labels = prompts.survey_option_labels(len(inst["options"]))
        named = prompts.culture_preamble(inst["culture"], language) + survey
        prompt = named if mode == "joint" or culture_in_prompt else survey
        for answer in answer_labels(inst, target, samples, rng, temperature):
            rows.setdefault("joint" if mode == "joint" else inst["culture"], []).append(
                {"prompt": prompt, "completion": labels[answer]})
    return rows
