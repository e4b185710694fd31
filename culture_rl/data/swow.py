"""Small World of Words (SWOW) association norms.

ALIGN fine-tunes on native speakers' free associations, so the loader turns either published SWOW
form into one per-cue frequency table:

* **raw** (one row per participant x cue: ``participantID, age, gender, nativeLanguage, country,
  section, cue, R1, R2, R3``), where each non-missing response in R1..R3 counts once;
* **aggregated** (``cue, response, freq`` or ``cue, association, freq``), where duplicate
  (cue, response) rows are summed.

The format is detected from the header (an ``R1`` column means raw), so users can point the config
at whatever file they downloaded.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from culture_rl.data.tabular import check_columns, read_table
from culture_rl.core.errors import DataError

AssociationNorms = dict[str, list[tuple[str, int]]]
"""cue -> [(response, count)], most frequent first, ties broken alphabetically."""

_RAW_COLUMNS = ("cue", "R1", "R2", "R3")
_RESPONSE = ("response", "association")
_AGG_COLUMNS = ("cue", _RESPONSE, "freq")
# SWOW codes "no further response" as #Missing and "did not know the cue" as #Unknown; R exports
# write NA. Only the exact "NA" is dropped: a lower-case "na" may be a genuine response.
_MISSING_CODES = {"#missing", "#unknown"}


def _is_missing(value: str) -> bool:
    value = value.strip()
    return not value or value == "NA" or value.lower() in _MISSING_CODES


def _normalise(value: str) -> str:
    # Associations are compared across participants, so "Dog " and "dog" must be one response.
    return value.strip().lower()


def _as_filter(values: str | Sequence[str] | None) -> frozenset[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    return frozenset(v.strip().casefold() for v in values)


def load_swow(
    path: str | Path,
    *,
    country: str | Sequence[str] | None = None,
    native_language: str | Sequence[str] | None = None,
) -> AssociationNorms:
    """Load SWOW norms (raw or aggregated, CSV or TSV) as ``cue -> [(response, count)]``.

    ``country`` / ``native_language`` keep only raw rows whose ``country`` / ``nativeLanguage``
    is one of the given values (case-insensitive), e.g. native Mandarin speakers living in China.
    Cues keep the order of their first appearance in the file.
    """
    header, rows = read_table(path, required=("cue",))
    counts: dict[str, Counter[str]] = {}
    seen = 0  # data rows read, to tell a header-only file from one whose rows all drop out
    filters = {"country": _as_filter(country), "nativeLanguage": _as_filter(native_language)}
    active = {col: allowed for col, allowed in filters.items() if allowed is not None}

    if "R1" in header:
        check_columns(header, _RAW_COLUMNS + tuple(active), path)
        for line, row in rows:
            seen += 1
            if any(row[col].strip().casefold() not in allowed for col, allowed in active.items()):
                continue
            cue = _cue(row, path, line)
            responses = [row[r] for r in ("R1", "R2", "R3") if not _is_missing(row[r])]
            counts.setdefault(cue, Counter()).update(_normalise(r) for r in responses)
    else:
        if active:
            col = next(iter(active))
            raise DataError(
                f"cannot filter by {col}: an aggregated SWOW file has no {col!r} column "
                "(filters need the raw per-participant file)",
                path=path,
                line=1,
            )
        resolved = check_columns(header, _AGG_COLUMNS, path)
        response_col = resolved[_RESPONSE]
        for line, row in rows:
            seen += 1
            cue = _cue(row, path, line)
            freq = _parse_freq(row["freq"], path, line)
            if _is_missing(row[response_col]):
                continue
            counts.setdefault(cue, Counter())[_normalise(row[response_col])] += freq

    norms = {
        cue: sorted(((r, n) for r, n in counter.items() if n > 0), key=lambda rn: (-rn[1], rn[0]))
        for cue, counter in counts.items()
    }
    # A cue whose only rows had freq 0 is not an association; drop it rather than keep [].
    norms = {cue: pairs for cue, pairs in norms.items() if pairs}
    if not seen:
        raise DataError("no associations (the file has only a header)", path=path, line=1)
    if not norms:
        shown = ", ".join(f"{col}={sorted(allowed)}" for col, allowed in active.items())
        why = f" after filtering ({shown})" if shown else ""
        raise DataError(f"no associations left{why}", path=path)
    return norms


def _cue(row: Mapping[str, str], path: str | Path, line: int) -> str:
    cue = _normalise(row["cue"])
    if not cue:
        raise DataError("empty cue", path=path, line=line, column="cue")
    return cue


def _parse_freq(text: str, path: str | Path, line: int) -> int:
    """Parse a count: an integer, or a float with no fractional part ("3.0" from R/pandas)."""
    text = text.strip()
    try:
        return _check_count(int(text), text, path, line)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"freq must be a number, got {text!r}", path=path, line=line,
                        column="freq") from None
    if not math.isfinite(value) or not value.is_integer():
        # Fractional "strengths" are not counts; silently rounding them would distort ranks.
        raise DataError(f"freq must be a whole count, got {text!r}", path=path, line=line,
                        column="freq")
    return _check_count(int(value), text, path, line)


def _check_count(value: int, text: str, path: str | Path, line: int) -> int:
    if value < 0:
        raise DataError(f"freq must be >= 0, got {text!r}", path=path, line=line, column="freq")
    return value


def write_swow_aggregated(norms: Mapping[str, Sequence[tuple[str, int]]], path: str | Path) -> None:
    """Write norms as an aggregated SWOW CSV (``cue,response,freq``, UTF-8) readable by
    :func:`load_swow`."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["cue", "response", "freq"])
        for cue, pairs in norms.items():
            for response, freq in pairs:
                writer.writerow([cue, response, int(freq)])
