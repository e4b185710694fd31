"""World Values Survey style questions with per-culture answer distributions.

Two input forms are accepted (chosen by file extension):

* ``.csv`` / ``.tsv``: the GlobalOpinionQA form (``question, selections, options, source``) where
  ``selections`` is the *text* ``defaultdict(<class 'list'>, {'China': [0.5, 0.5], ...})`` and
  ``options`` a Python list text. These texts are parsed with :func:`ast.literal_eval` only: the
  file is user data, and ``eval`` on it would run whatever code it contains.
* ``.jsonl``: ``{id, question, options, distributions: {culture: [...]}}`` with optional
  ``topic`` and ``source``.

Distributions are renormalised so that metrics (e.g. Jensen-Shannon distance) compare shapes, not
rounding noise in the published percentages.
"""

from __future__ import annotations

import ast
import csv
import json
import logging
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from culture_rl.data.tabular import iter_jsonl, read_table
from culture_rl.core.errors import DataError

logger = logging.getLogger(__name__)

# GlobalOpinionQA stores the repr() of a defaultdict; we unwrap it and literal_eval the dict.
_DEFAULTDICT = re.compile(r"^\s*defaultdict\(\s*<class\s+'list'>\s*,\s*(.*)\)\s*$", re.DOTALL)
# Already-normalised input is kept bit-for-bit, so write -> load round trips are exact.
_NORMALISED_TOL = 1e-12


@dataclass(frozen=True)
class SurveyQuestion:
    """One multiple-choice question and each culture's distribution over its ordered options."""

    id: str
    question: str
    options: tuple[str, ...]
    distributions: dict[str, tuple[float, ...]]
    source: str = "WVS"
    topic: str | None = None


@dataclass
class _Record:
    """A question as read from a file, before validation (kept to report the right line)."""

    line: int
    id: Any
    question: Any
    options: Any
    distributions: Any
    dist_column: str
    source: str
    topic: Any = None
    from_text: bool = False  # GlobalOpinionQA: options/selections are still Python-literal text


def load_survey(
    path: str | Path, *, source: str | None = "WVS", skip_mismatched: bool = False
) -> list[SurveyQuestion]:
    """Load survey questions from a GlobalOpinionQA CSV/TSV or a JSONL file.

    Only questions whose source equals ``source`` are kept (``None`` keeps all; a JSONL row
    without ``source`` counts as ``"WVS"``). A culture whose distribution length differs from
    the option count is an error, or with ``skip_mismatched`` is dropped with a warning
    (GlobalOpinionQA has such rows); a question left with no culture is then dropped too.
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".jsonl":
        records = _jsonl_records(path)
    elif suffix in (".csv", ".tsv"):
        records = _goqa_records(path)
    else:
        raise DataError(f"unsupported survey file type {suffix!r} (use .csv, .tsv or .jsonl)",
                        path=path)
    questions: list[SurveyQuestion] = []
    seen_sources: set[str] = set()
    seen_ids: dict[str, int] = {}
    matched = 0
    for rec in records:
        seen_sources.add(rec.source)
        if source is not None and rec.source != source:
            continue
        matched += 1
        question = _build(rec, path, skip_mismatched)
        if question is None:
            continue
        if question.id in seen_ids:
            raise DataError(f"duplicate id {question.id!r} (first on line {seen_ids[question.id]})",
                            path=path, line=rec.line, column="id")
        seen_ids[question.id] = rec.line
        questions.append(question)
    if not questions:
        if not matched:
            wanted = "" if source is None else f" with source {source!r}"
            raise DataError(f"no questions{wanted} (sources found: {sorted(seen_sources)})",
                            path=path)
        raise DataError("no usable questions left (all were dropped as mismatched)", path=path)
    return questions


def _jsonl_records(path: str | Path) -> Iterator[_Record]:
    for line, obj in iter_jsonl(path):
        missing = [k for k in ("id", "question", "options", "distributions") if k not in obj]
        if missing:
            raise DataError(f"missing key {missing[0]!r}", path=path, line=line, column=missing[0])
        src = obj.get("source", "WVS")
        if not isinstance(src, str):
            raise DataError("source must be a string", path=path, line=line, column="source")
        yield _Record(line, obj["id"], obj["question"], obj["options"], obj["distributions"],
                      "distributions", src, obj.get("topic"))


def _goqa_records(path: str | Path) -> Iterator[_Record]:
    header, rows = read_table(path, required=("question", "selections", "options", "source"))
    for line, row in rows:
        src = row["source"].strip()
        # Parsing is deferred to _build, so rows of other sources are never parsed at all.
        yield _Record(line, f"goqa-{line}", row["question"], row["options"], row["selections"],
                      "selections", src, row.get("topic") or None, from_text=True)


def _literal(text: str, path: str | Path, line: int, column: str) -> Any:
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as err:
        # literal_eval rejects calls, names and attributes, e.g. __import__('os'). Its message
        # names the node by its memory address ("<ast.Call object at 0x7f...>"): the kind will do.
        reason = re.sub(r"<ast\.(\w+) object at 0x[0-9a-fA-F]+>", r"\1", str(err))
        raise DataError(f"not a plain Python literal ({type(err).__name__}: {reason})",
                        path=path, line=line, column=column) from None


def _build(rec: _Record, path: str | Path, skip: bool) -> SurveyQuestion | None:
    line, col = rec.line, rec.dist_column
    if rec.from_text:
        rec.options = _literal(rec.options, path, line, "options")
        match = _DEFAULTDICT.match(rec.distributions)
        body = match.group(1) if match else rec.distributions
        rec.distributions = _literal(body, path, line, col)

    if isinstance(rec.id, bool) or not isinstance(rec.id, (str, int)) or not str(rec.id).strip():
        raise DataError("id must be a non-empty string", path=path, line=line, column="id")
    if not isinstance(rec.question, str) or not rec.question.strip():
        raise DataError("question must be a non-empty string", path=path, line=line,
                        column="question")
    if rec.topic is not None and not isinstance(rec.topic, str):
        raise DataError("topic must be a string", path=path, line=line, column="topic")
    if not isinstance(rec.options, (list, tuple)) or not all(
        isinstance(o, str) for o in rec.options
    ):
        raise DataError("options must be a list of strings", path=path, line=line,
                        column="options")
    options = tuple(rec.options)
    if len(options) < 2:
        raise DataError(f"need at least 2 options, got {len(options)}", path=path, line=line,
                        column="options")
    if not isinstance(rec.distributions, dict) or not rec.distributions:
        raise DataError("expected a non-empty mapping culture -> probabilities", path=path,
                        line=line, column=col)

    distributions: dict[str, tuple[float, ...]] = {}
    for culture, values in rec.distributions.items():
        if not isinstance(culture, str) or not culture.strip():
            raise DataError(f"culture name must be a non-empty string, got {culture!r}",
                            path=path, line=line, column=col)
        if not isinstance(values, (list, tuple)):
            raise DataError(f"culture {culture!r}: expected a list of probabilities", path=path,
                            line=line, column=col)
        if len(values) != len(options):
            message = (f"culture {culture!r} has {len(values)} probabilities "
                       f"but the question has {len(options)} options")
            if not skip:
                raise DataError(message, path=path, line=line, column=col)
            logger.warning("%s:%d: dropping culture %r: %s", path, line, culture, message)
            continue
        distributions[culture] = _normalise(values, culture, path, line, col)
    if not distributions:
        logger.warning("%s:%d: dropping question: no culture matches its options", path, line)
        return None
    return SurveyQuestion(str(rec.id), rec.question, options, distributions, rec.source,
                          rec.topic or None)


def _normalise(values: Any, culture: str, path: str | Path, line: int, col: str
               ) -> tuple[float, ...]:
    def bad(why: str) -> DataError:
        return DataError(f"culture {culture!r}: {why}", path=path, line=line, column=col)

    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise bad("probabilities must be numbers")
    try:
        floats = tuple(float(v) for v in values)
    except OverflowError:  # a JSON integer beyond the float range
        raise bad("probabilities must be finite (found an integer too large for a float)"
                  ) from None
    if any(math.isnan(v) or math.isinf(v) for v in floats):
        raise bad("probabilities must be finite (found NaN or infinity)")
    if any(v < 0 for v in floats):
        raise bad("probabilities must be >= 0")
    try:
        total = math.fsum(floats)
    except OverflowError:  # finite values whose sum is not, e.g. [1e308, 1e308]
        raise bad("probabilities are too large to sum; give shares or percentages") from None
    if total <= 0:
        raise bad("probabilities sum to 0")
    if abs(total - 1.0) <= _NORMALISED_TOL:
        return floats
    return tuple(v / total for v in floats)


def write_survey_jsonl(questions: Iterable[SurveyQuestion], path: str | Path) -> None:
    """Write questions in the JSONL form read by :func:`load_survey` (UTF-8, one per line)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as handle:
        for q in questions:
            obj: dict[str, Any] = {
                "id": q.id, "question": q.question, "options": list(q.options),
                "distributions": {c: list(d) for c, d in q.distributions.items()},
                "source": q.source,
            }
            if q.topic is not None:
                obj["topic"] = q.topic
            handle.write(json.dumps(obj, ensure_ascii=False) + "\n")


def write_survey_goqa_csv(questions: Iterable[SurveyQuestion], path: str | Path) -> None:
    """Write questions in the GlobalOpinionQA CSV form (ids are not stored: the loader derives
    ``goqa-<line>``). A ``topic`` column is added only when some question has a topic."""
    questions = list(questions)
    with_topic = any(q.topic is not None for q in questions)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "selections", "options", "source"]
                        + (["topic"] if with_topic else []))
        for q in questions:
            # repr() of floats and strings is exactly what literal_eval reads back.
            selections = {c: list(d) for c, d in q.distributions.items()}
            row = [q.question, f"defaultdict(<class 'list'>, {selections!r})",
                   repr(list(q.options)), q.source]
            writer.writerow(row + ([q.topic or ""] if with_topic else []))
