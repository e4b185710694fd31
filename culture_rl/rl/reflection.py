"""Self-prompted reflective learning (CALM): the pure parts of a round.

A round: the model answers prompts that name a culture; it is then prompted, by its own
template, to reflect on each answer from that culture's perspective and revise it; the scorers
score initial and revised answers against the culture's reference; the revisions that improve
become training pairs (SFT on the revision, revised over initial in a pairwise loss). These
functions build the reflection prompts, pick the pairs and summarise the round; the actors are
driven by :mod:`culture_rl.rl.reflection_loop`, the losses are in :mod:`culture_rl.rl.preference`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

# The reflection prompt repeats the original prompt at its end, so the revision is written in
# the same answer format the model knows (a tiny or a base model has never seen a "revise"
# instruction; a chat model reads the instruction, a base model continues the format).
DEFAULT_TEMPLATES = {
    "en": "{prompt}{answer}\nReflection: is this what a person from {culture} would answer? "
          "Thinking as a person from {culture}, here is a revised answer.\n{prompt}",
    "zh": "{prompt}{answer}\n反思：这是来自{culture}的人会给出的回答吗？以来自{culture}的人的"
          "视角，给出修改后的回答。\n{prompt}",
}


def reflection_template(template: str | None, language: str) -> str:
    """The configured template, or the built-in one of ``language``."""
    return template if template is not None else DEFAULT_TEMPLATES[language]


def reflection_prompt(template: str, prompt: str, answer: str, culture: str) -> str:
    """The prompt that asks the model to reflect on ``answer`` and revise it."""
    return template.format(prompt=prompt, answer=answer.rstrip(), culture=culture)


def revision_prompts(prompts: Sequence[str], answers: Sequence[str], cultures: Sequence[str],
                     answers_per_prompt: int, template: str, revise_with: str) -> list[str]:
    """The prompt each answer's revisions are sampled from (answer i belongs to prompt
    i // answers_per_prompt): its reflection prompt, or with ``revise_with='resampling'`` the
    original prompt again (the control: best-of-N resampling without reflection)."""
    rows = []
    for i, (answer, culture) in enumerate(zip(answers, cultures)):
        prompt = prompts[i // answers_per_prompt]
        rows.append(prompt if revise_with == "resampling"
                    else reflection_prompt(template, prompt, answer, culture))
    return rows


@dataclass(frozen=True)
class Pair:
    """One training pair: initial answer ``initial`` (index into the round's answers) and its
    best revision ``revision`` (index into the round's revisions)."""

    initial: int
    revision: int
    gain: float


def best_revisions(initial_rewards: Sequence[float], revised_rewards: Sequence[float],
                   revisions_per_answer: int) -> list[tuple[int, float]]:
    """For each initial answer i (its revisions are rows i*R .. i*R+R-1), the index and reward
    of its best-scoring revision (the first one on ties)."""
    if len(revised_rewards) != len(initial_rewards) * revisions_per_answer:
        raise ValueError(f"{len(revised_rewards)} revision rewards for {len(initial_rewards)} "
                         f"answers x {revisions_per_answer} revisions")
    best = []
    for i in range(len(initial_rewards)):
        rows = range(i * revisions_per_answer, (i + 1) * revisions_per_answer)
        top = max(rows, key=lambda j: (revised_rewards[j], -j))
        best.append((top, float(revised_rewards[top])))
    return best


def improvement_pairs(initial_rewards: Sequence[float], best: Sequence[tuple[int, float]],
                      min_improvement: float = 0.0,
                      finished: Sequence[bool] | None = None) -> list[Pair]:
    """The answers whose best revision beats them by more than ``min_improvement``; with
    ``finished`` (per revision row), only revisions that ended on their own count: a revision
    cut off at the token limit would teach the model not to stop."""
    return [Pair(i, j, reward - float(initial_rewards[i]))
            for i, (j, reward) in enumerate(best)
            if reward - float(initial_rewards[i]) > min_improvement
            and (finished is None or finished[j])]


def repeat_to_multiple(items: Sequence, multiple: int) -> list:
    """``items`` cycled up to the next multiple of ``multiple`` (at least one multiple): every
    trainer rank then gets the same number of full micro batches (a rank with fewer steps would
    leave the others waiting in a collective). Empty stays empty."""
    if not items:
        return []
    target = max(multiple, -(-len(items) // multiple) * multiple)
    return [items[i % len(items)] for i in range(target)]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def round_statistics(initial_rewards: Sequence[float], best: Sequence[tuple[int, float]],
                     metas: Sequence[Mapping], min_improvement: float = 0.0) -> dict[str, float]:
    """Reward before (initial answers) and after (their best revisions), the share of answers
    whose best revision improves, overall and per ``meta['culture']`` (as ``key/<culture>``)."""
    groups: dict[str, list[int]] = {}
    for i, meta in enumerate(metas):
        groups.setdefault(str(meta.get("culture", "all")), []).append(i)
    values: dict[str, float] = {}

    def add(suffix: str, rows: Sequence[int]) -> None:
        before = [float(initial_rewards[i]) for i in rows]
        after = [best[i][1] for i in rows]
        values["reward_initial" + suffix] = _mean(before)
        values["reward_revised" + suffix] = _mean(after)
        values["improved_share" + suffix] = _mean(
            [float(a - b > min_improvement) for a, b in zip(after, before)])

    add("", range(len(initial_rewards)))
    for culture, rows in sorted(groups.items()):
        add(f"/{culture}", rows)
    return values
