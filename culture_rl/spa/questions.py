"""Stage 1 of CultureSPA: the model writes new survey questions per culture topic.

A prompt shows a few example questions of the topic in the survey format the model knows and
ends with ``Question:``; the completion is parsed back into a question and its options. What
does not parse (no options, one option, options repeated, an empty question) is dropped and
counted; questions are deduplicated on their normalised text (and against the seed examples,
so a model that only recites its examples adds nothing).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from culture_rl.data import prompts

_OPTION = re.compile(r"^\s*(\d+)\s*[.)：:、]\s*(.+?)\s*$")
_STOP = re.compile(r"^\s*(answer|回答|question|问题)\s*[:：]", re.IGNORECASE)


@dataclass(frozen=True)
class GeneratedQuestion:
    topic: str
    question: str
    options: tuple[str, ...]

    @property
    def key(self) -> str:
        return normalise(self.question)


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def generation_prompt(topic: str, examples: Sequence[tuple[str, Sequence[str]]],
                      language: str = "en") -> str:
    """Few-shot prompt for a new question on ``topic``: a questionnaire of the examples, then the
    next question's heading, after which the model continues."""
    return prompts.questionnaire(topic, examples, language) + prompts.questionnaire_heading(language)


@dataclass(frozen=True)
class ParseResult:
    question: GeneratedQuestion | None
    reason: str | None  # why it was dropped


def parse_question(topic: str, completion: str, min_options: int = 2,
                   max_options: int = 10) -> ParseResult:
    """A completion such as `` On X: ...\\nOptions:\\n1. a\\n2. b\\nAnswer: 1`` -> question + options.

    The question is the first line; options are the numbered lines after it, up to an
    ``Answer:`` / next ``Question:`` line or a blank line after the options began.
    """
    lines = completion.strip("\n").split("\n")
    question = lines[0].strip() if lines else ""
    if not question or _OPTION.match(question):
        return ParseResult(None, "no question text")
    options: list[str] = []
    for line in lines[1:]:
        if _STOP.match(line) or (not line.strip() and options):
            break
        match = _OPTION.match(line)
        if match:
            if int(match.group(1)) != len(options) + 1:
                return ParseResult(None, "options out of order")
            options.append(match.group(2))
    if len(options) < min_options:
        return ParseResult(None, "fewer than two options")
    if len(options) > max_options:
        return ParseResult(None, "too many options")
    if len({normalise(o) for o in options}) != len(options):
        return ParseResult(None, "repeated option")
    return ParseResult(GeneratedQuestion(topic, question, tuple(options)), None)


def collect(topic_completions: Sequence[tuple[str, str]],
            seen: Sequence[str] = ()) -> tuple[list[GeneratedQuestion], dict[str, int]]:
    """Parse (topic, completion) pairs; keep the first of each new question. Returns the
    questions and the count of every reason for dropping one (``duplicate`` included)."""
    kept, dropped = [], {}
    keys = {normalise(s) for s in seen}
    for topic, completion in topic_completions:
        result = parse_question(topic, completion)
        reason = result.reason
        if result.question is not None and result.question.key in keys:
            reason = "duplicate"
        if reason:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        keys.add(result.question.key)
        kept.append(result.question)
    return kept, dropped
