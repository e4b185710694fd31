"""User-facing errors.

Every problem a user can fix (a bad config, a malformed data file, a plan that cannot fit the
cluster) is raised as one of these. The CLI prints ``str(error)`` on one line and exits 2, so the
message itself must say *where* the problem is: the file and line for data, the file and the
dotted field path for configs.
"""

from __future__ import annotations

from pathlib import Path


class CultureRLError(Exception):
    """Base of every error the CLI reports as a one-line message with exit code 2."""


def _location(path: str | Path | None, line: int | None, column: str | None) -> str:
    parts = []
    if path is not None:
        parts.append(str(path))
    if line is not None:
        parts.append(f"line {line}")
    if column is not None:
        parts.append(f"column {column!r}")
    return ", ".join(parts)


class DataError(CultureRLError, ValueError):
    """A data file (CSV, TSV, JSONL) that cannot be read as its format requires.

    ``DataError("missing column 'cue'", path="swow.csv", line=1)`` reads
    ``swow.csv, line 1: missing column 'cue'``.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        column: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        self.column = column
        self.reason = message
        where = _location(path, line, column)
        super().__init__(f"{where}: {message}" if where else message)


class ConfigError(CultureRLError, ValueError):
    """A config that cannot be used: unknown key, wrong type, impossible value or plan.

    ``ConfigError("must be > 0", path="q.yaml", field="sft.learning_rate")`` reads
    ``q.yaml: sft.learning_rate: must be > 0``.
    """

    def __init__(
        self, message: str, *, path: str | Path | None = None, field: str | None = None
    ) -> None:
        self.path = None if path is None else str(path)
        self.field = field
        self.reason = message
        prefix = ": ".join(p for p in (self.path, field) if p)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class ResourceError(CultureRLError):
    """A run whose resource plan cannot fit the cluster; the message carries the numbers."""
