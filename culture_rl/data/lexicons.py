"""Psycholinguistic rating lexicons used as association-level features.

* Warriner, Kuperman & Brysbaert (2013) affective norms: ``Word, V.Mean.Sum, A.Mean.Sum,
  D.Mean.Sum`` (valence, arousal, dominance; scale 1-9).
* Brysbaert, Warriner & Kuperman (2014) concreteness: ``Word, Bigram, Conc.M, Conc.SD, ...``
  (scale 1-5).

Both are read from CSV or TSV (the published files come in either form). A rating outside the
published scale is an error, not a clip: it almost always means a shifted column or a file from
another lexicon.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping
from pathlib import Path

from culture_rl.data.tabular import read_table
from culture_rl.core.errors import DataError

logger = logging.getLogger(__name__)

Lexicon = dict[str, dict[str, float]]
"""word (lower-case) -> {rating name: value}."""

_WARRINER = {"valence": "V.Mean.Sum", "arousal": "A.Mean.Sum", "dominance": "D.Mean.Sum"}
_BRYSBAERT = {"concreteness": "Conc.M"}


def _load(path: str | Path, columns: Mapping[str, str], low: float, high: float) -> Lexicon:
    """Read ``Word`` plus the rating ``columns`` (key -> column name), each within [low, high]."""
    _, rows = read_table(path, required=("Word", *columns.values()))
    lexicon: Lexicon = {}
    first_line: dict[str, int] = {}
    for line, row in rows:
        word = row["Word"].strip().lower()
        if not word:
            raise DataError("empty word", path=path, line=line, column="Word")
        ratings = {key: _rating(row[col], low, high, path, line, col)
                   for key, col in columns.items()}
        if word in first_line:
            # Lower-casing can merge entries such as "May" and "may"; the first one is kept so
            # the result does not depend on a later, usually rarer, capitalised variant.
            logger.warning("%s:%d: duplicate word %r (first on line %d); keeping the first",
                           path, line, word, first_line[word])
            continue
        first_line[word] = line
        lexicon[word] = ratings
    if not lexicon:
        raise DataError("no rated words (the file has only a header)", path=path, line=1)
    return lexicon


def _rating(text: str, low: float, high: float, path: str | Path, line: int, col: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise DataError(f"rating must be a number, got {text!r}", path=path, line=line,
                        column=col) from None
    if math.isnan(value) or not low <= value <= high:
        raise DataError(f"rating {text.strip()!r} is outside the scale {low:g}-{high:g}",
                        path=path, line=line, column=col)
    return value


def load_warriner(path: str | Path) -> Lexicon:
    """Load Warriner et al. norms as ``word -> {"valence", "arousal", "dominance"}`` (1-9)."""
    return _load(path, _WARRINER, 1.0, 9.0)


def load_brysbaert(path: str | Path) -> Lexicon:
    """Load Brysbaert et al. concreteness as ``word -> {"concreteness"}`` (1-5)."""
    return _load(path, _BRYSBAERT, 1.0, 5.0)


def merge_lexicons(*lexicons: Mapping[str, Mapping[str, float]]) -> Lexicon:
    """Merge lexicons word by word into fresh dicts (inputs are not modified).

    A word gets the union of its ratings; if two lexicons rate the same key, the later one wins,
    so callers can list a preferred (e.g. culture-specific) lexicon last.
    """
    merged: Lexicon = {}
    for lexicon in lexicons:
        for word, ratings in lexicon.items():
            merged.setdefault(word, {}).update(ratings)
    return merged


def _open_writer(path: str | Path):
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p.open("w", encoding="utf-8", newline="")


def _value(ratings: Mapping[str, float], key: str, word: str) -> float:
    if key not in ratings:
        raise ValueError(f"word {word!r} has no {key!r} rating")
    return float(ratings[key])


def write_warriner(ratings: Mapping[str, Mapping[str, float]], path: str | Path) -> None:
    """Write ``word -> {valence, arousal, dominance}`` in the Warriner column layout."""
    with _open_writer(path) as handle:
        writer = csv.writer(handle)
        writer.writerow(["Word", *_WARRINER.values()])
        for word, r in ratings.items():
            writer.writerow([word, *(_value(r, key, word) for key in _WARRINER)])


def write_brysbaert(ratings: Mapping[str, Mapping[str, float]], path: str | Path) -> None:
    """Write ``word -> {concreteness[, concreteness_sd]}`` in the Brysbaert column layout.

    ``Bigram`` is 1 for multi-word expressions, as in the published file; ``Conc.SD`` is left
    empty when no ``concreteness_sd`` is given rather than inventing a spread.
    """
    with _open_writer(path) as handle:
        writer = csv.writer(handle)
        writer.writerow(["Word", "Bigram", "Conc.M", "Conc.SD"])
        for word, r in ratings.items():
            sd = r.get("concreteness_sd")
            writer.writerow([word, int(" " in word.strip()), _value(r, "concreteness", word),
                             "" if sd is None else float(sd)])
