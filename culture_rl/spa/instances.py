"""Stages 4-5 of CultureSPA, pure: which instances are culture-related, and the training rows.

A question is *culture-related* for culture X when the model's culture-aware answer (prompted
"you are a person from X") differs from its culture-unaware one: the chosen option differs, or
the two answer distributions are further apart than a JS-distance threshold. Those instances
become fine-tuning data, culture-joint (one model, the culture named in the prompt) or
culture-specific (one adapter per culture, trained on that culture's instances).
"""

from __future__ import annotations

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


def answer_labels(instance: Mapping, target: str, samples: int, rng: random.Random
                  ) -> list[int]:
    """The option indices an instance is trained on: its aware answer once (``argmax``), or
    ``samples`` draws from the aware distribution (``sampled``), so the tuned model learns the
    culture's spread of answers rather than only its mode (a one-hot answer is far, in JS
    distance, from any survey population's distribution)."""
    if target == "argmax":
        return [instance["answer"]]
    if target == "sampled":
        options = range(len(instance["aware"]))
        return rng.choices(options, weights=instance["aware"], k=samples)
    raise ValueError(f"target must be 'argmax' or 'sampled', got {target!r}")


def training_rows(instances: Sequence[Mapping], mode: str, language: str = "en",
                  culture_in_prompt: bool = True, target: str = "argmax", samples: int = 1,
                  seed: int = 0) -> dict[str, list[dict]]:
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
        for answer in answer_labels(inst, target, samples, rng):
            rows.setdefault("joint" if mode == "joint" else inst["culture"], []).append(
                {"prompt": prompt, "completion": labels[answer]})
    return rows
