"""Stage 1 of CultureSPA: the model writes new survey questions per culture topic.

Two forms of prompt (``spa.question_prompt``), each a registered pair of pure functions (the
prompt, and the parser of its completion):

- ``continuation``, for a base model: a few example questions of the topic in the survey format
  the model knows, ending with ``Question:``; the model continues the questionnaire.
- ``instruction``, for a chat model, as the paper and its authors' code do: a social scientist's
  role as the system message, the topic and a few numbered example questions, and a request
  for one new question as JSON ``{"Question": ..., "Options": [...]}``.

What does not parse (not JSON, no options, one option, options repeated, an empty question) is
dropped and counted; questions are deduplicated on their normalised text (and against the seed
examples, so a model that only recites its examples adds nothing).

The authors also show up to two of the model's own earlier questions among the examples
(self-instruct rounds); we generate every attempt in one batch from the seed questions only,
so that the stage is one pass over the actors (a documented difference).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Callable, Sequence

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


@dataclass(frozen=True)
class ParseResult:
    question: GeneratedQuestion | None
    reason: str | None  # why it was dropped


def checked_question(topic: str, question: str, options: Sequence[str], min_options: int = 2,
                     max_options: int = 10) -> ParseResult:
    """The filters every form shares: a question text, 2-10 options, none repeated."""
    if len(options) < min_options:
        return ParseResult(None, "fewer than two options")
    if len(options) > max_options:
        return ParseResult(None, "too many options")
    if len({normalise(o) for o in options}) != len(options):
        return ParseResult(None, "repeated option")
    return ParseResult(GeneratedQuestion(topic, question, tuple(options)), None)


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
    return checked_question(topic, question, options, min_options, max_options)


def _field(obj: dict, name: str):
    """``Question`` / ``question`` / ``QUESTION``: models vary the key's case."""
    return next((value for key, value in obj.items() if key.strip().lower() == name), None)


_LABELLED_QUESTION = re.compile(r"(?:question|问题)\s*[:：]\s*(.+?)\s*\n+\s*(?:options|选项)\s*[:：]"
                                r"\s*(\[.*?\])", re.IGNORECASE | re.DOTALL)


def _json_fields(completion: str) -> tuple[object, object] | None:
    """(question, options) of the first JSON object in the text, or of the examples' own
    ``Question: ...`` / ``Options: [...]`` lines (which a small chat model copies instead of
    writing the JSON asked for), else None."""
    start = completion.find("{")
    if start >= 0:
        try:
            obj, _ = json.JSONDecoder().raw_decode(completion[start:])
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            return _field(obj, "question"), _field(obj, "options")
    match = _LABELLED_QUESTION.search(completion)
    if match:
        try:
            return match.group(1), json.loads(match.group(2))
        except ValueError:
            return None
    return None


def parse_json_question(topic: str, completion: str, min_options: int = 2,
                        max_options: int = 10) -> ParseResult:
    """A completion holding ``{"Question": "...", "Options": ["...", ...]}`` -> question +
    options. The first JSON object in the text is read, so a code fence or a sentence around
    it does no harm, and the examples' labelled form (``Question: ...`` then ``Options:`` and a
    JSON list) is read too (the authors' parser needs the JSON alone; we keep more of a small
    model's answers, and count what is neither)."""
    fields = _json_fields(completion)
    if fields is None:
        return ParseResult(None, "not JSON")
    question, options = fields
    if not isinstance(question, str) or not question.strip():
        return ParseResult(None, "no question text")
    if not isinstance(options, list) or not all(isinstance(o, (str, int, float))
                                                for o in options):
        return ParseResult(None, "fewer than two options")
    options = [str(o).strip() for o in options if str(o).strip()]
    return checked_question(topic, " ".join(question.split()), options, min_options,
                            max_options)


def continuation_prompt(topic: str, examples: Sequence[tuple[str, Sequence[str]]],
                        language: str = "en") -> str:
    """Few-shot prompt for a new question on ``topic``: a questionnaire of the examples, then the
    next question's heading, after which the model continues."""
    return prompts.questionnaire(topic, examples, language) + prompts.questionnaire_heading(language)


@dataclass(frozen=True)
class QuestionForm:
    prompt: Callable[[str, Sequence[tuple[str, Sequence[str]]], str], str]
    parse: Callable[[str, str], ParseResult]


QUESTION_FORMS = {
    "continuation": QuestionForm(continuation_prompt, parse_question),
    "instruction": QuestionForm(prompts.question_request, parse_json_question),
}


def question_form(setting: str, model_uses_chat: bool) -> str:
    """``spa.question_prompt`` resolved: 'auto' is 'instruction' for a model with a chat
    template and 'continuation' for one without."""
    if setting == "auto":
        return "instruction" if model_uses_chat else "continuation"
    return setting


def collect(topic_completions: Sequence[tuple[str, str]], seen: Sequence[str] = (),
            form: str = "continuation") -> tuple[list[GeneratedQuestion], dict[str, int]]:
    """Parse (topic, completion) pairs; keep the first of each new question. Returns the
    questions and the count of every reason for dropping one (``duplicate`` included)."""
    kept, dropped = [], {}
    keys = {normalise(s) for s in seen}
    for topic, completion in topic_completions:
        result = QUESTION_FORMS[form].parse(topic, completion)
        reason = result.reason
        if result.question is not None and result.question.key in keys:
            reason = "duplicate"
        if reason:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        keys.add(result.question.key)
        kept.append(result.question)
    return kept, dropped
