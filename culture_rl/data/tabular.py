"""Shared readers for the user's CSV / TSV / JSONL data files.

Every loader in ``culture_rl.data`` goes through these helpers so that a malformed file always
fails the same way: a :class:`~culture_rl.core.errors.DataError` whose message names the file
and the 1-based physical line (the header is line 1), never a bare ``KeyError`` or
``UnicodeDecodeError`` from deep inside a training job.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from culture_rl.core.errors import DataError

_BOM = b"\xef\xbb\xbf"

# A column spec is either one name or a tuple of aliases of which any one will do.
ColumnSpec = str | tuple[str, ...]


def read_text(path: str | Path) -> str:
    """Return the UTF-8 text of ``path`` (a leading BOM is dropped).

    Bytes that are not UTF-8 are reported with the line they sit on, because "invalid start byte
    at position 81233" is useless to someone fixing a spreadsheet export.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise DataError("file not found", path=p) from None
    except IsADirectoryError:
        raise DataError("is a directory, not a file", path=p) from None
    except OSError as err:
        raise DataError(f"cannot read file: {err.strerror or err}", path=p) from None
    if raw.startswith(_BOM):
        # Excel writes a BOM; stripping it keeps byte offsets line-aligned (it holds no newline).
        raw = raw[len(_BOM) :]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        bad = raw[err.start : err.end].hex(" ")
        raise DataError(f"invalid UTF-8 bytes ({bad}); save the file as UTF-8", path=p, line=line)


def check_columns(
    header: Sequence[str], required: Sequence[ColumnSpec], path: str | Path
) -> dict[ColumnSpec, str]:
    """Check that every required column (or one of its aliases) is in ``header``.

    Returns a map from each spec to the header name that satisfied it, so callers can read a
    row without caring which alias the file used.
    """
    present = set(header)
    resolved: dict[ColumnSpec, str] = {}
    for spec in required:
        aliases = (spec,) if isinstance(spec, str) else tuple(spec)
        found = next((a for a in aliases if a in present), None)
        if found is None:
            wanted = " or ".join(repr(a) for a in aliases)
            have = ", ".join(repr(h) for h in header)
            raise DataError(f"missing column {wanted} (header has {have})", path=path, line=1)
        resolved[spec] = found
    return resolved


def read_table(
    path: str | Path, required: Sequence[ColumnSpec] = ()
) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """Read a CSV or TSV file: return its header and an iterator of ``(line, row)`` pairs.

    The delimiter is a tab if the header line holds one, else a comma (SWOW and the lexicons are
    distributed in both forms). ``line`` is the 1-based physical line where the record starts,
    which stays right even when a quoted field spans several lines. Blank lines are skipped. The
    header, encoding and required columns are checked before this returns; ragged rows are
    reported while iterating.
    """
    text = read_text(path)
    first_line = text.split("\n", 1)[0]
    if not text.strip():
        raise DataError("empty file (expected a header line)", path=path, line=1)
    delimiter = "\t" if "\t" in first_line else ","
    # newline="" keeps quoted newlines intact, as the csv module requires. strict: a quote
    # that is never closed must be an error, not a last field that swallows the rest of the
    # file (with the right field count, so every later row would vanish without a word).
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = [name.strip() for name in next(reader)]
    except csv.Error as err:
        raise DataError(f"malformed header: {_csv_reason(err)}", path=path, line=1) from None
    if not any(header):
        raise DataError("empty header line", path=path, line=1)
    named = [h for h in header if h]
    duplicates = sorted({h for h in named if named.count(h) > 1})
    if duplicates:
        raise DataError(f"duplicate column(s) {duplicates} in header", path=path, line=1)
    check_columns(header, required, path)
    return header, _rows(reader, header, path, start=reader.line_num + 1)


def _rows(
    reader: Iterator[list[str]], header: list[str], path: str | Path, start: int
) -> Iterator[tuple[int, dict[str, str]]]:
    line = start
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise DataError(f"malformed CSV record: {_csv_reason(err)}", path=path,
                            line=line) from None
        if fields and len(fields) != len(header):
            raise DataError(
                f"row has {len(fields)} fields but the header has {len(header)}",
                path=path,
                line=line,
            )
        if fields:
            yield line, dict(zip(header, fields))
        # reader.line_num counts physical lines consumed so far; the next record starts after.
        line = reader.line_num + 1  # type: ignore[attr-defined]


def _csv_reason(err: csv.Error) -> str:
    reason = str(err)
    if reason == "unexpected end of data":  # what strict mode says about an unclosed quote
        reason += " (a quote opened in this record is never closed)"
    return reason


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line, object)`` for each non-blank line of a JSON Lines file.

    The file is read and checked for encoding and emptiness up front; a line that is not valid
    JSON or not a JSON object is reported with its line number while iterating.
    """
    text = read_text(path)
    if not text.strip():
        raise DataError("empty file (expected one JSON object per line)", path=path, line=1)
    return jsonl_objects(text, path)


def jsonl_objects(text: str, path: str | Path) -> Iterator[tuple[int, dict]]:
    """``(line, object)`` for each non-blank line of JSON Lines ``text`` read from ``path``."""
    # Split on "\n" only: str.splitlines() also breaks on U+2028 etc., which may legally appear
    # inside JSON strings and would shift every later line number.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"invalid JSON: {err.msg} (char {err.pos + 1})", path=path, line=number) from None
        except RecursionError:  # e.g. [[[[...]]]] thousands deep: no data file nests like that
            raise DataError("invalid JSON: nested too deeply", path=path, line=number) from None
        except ValueError as err:  # an integer of over 4300 digits (int() refuses to parse it)
            raise DataError(f"invalid JSON: {str(err).split(';')[0]}", path=path,
                            line=number) from None
        if not isinstance(obj, dict):
            raise DataError(
                f"expected a JSON object, got {type(obj).__name__}", path=path, line=number
            )
        yield number, obj
