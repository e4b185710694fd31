"""Labelled value statements for value identification / classification (CALM-style).

JSON Lines, one statement per line: ``{"text": ..., "label": ..., "culture": ...}`` (``culture``
and ``id`` optional). The synthetic world writes this form (``world/statements.jsonl``).
"""

from __future__ import annotations

from pathlib import Path

from culture_rl.data.tabular import iter_jsonl
from culture_rl.core.errors import DataError


def load_statements(path: str | Path) -> list[dict]:
    """Statements as dicts with ``id``, ``text``, ``label`` and ``culture`` (None if absent)."""
    statements = []
    for line, obj in iter_jsonl(path):
        for key in ("text", "label"):
            if key not in obj:
                raise DataError(f"missing key {key!r}", path=path, line=line, column=key)
            if not isinstance(obj[key], str) or not obj[key].strip():
                raise DataError(f"{key} must be a non-empty string", path=path, line=line,
                                column=key)
        culture = obj.get("culture")
        if culture is not None and not isinstance(culture, str):
            raise DataError("culture must be a string", path=path, line=line, column="culture")
        # As for survey ids: a list or object would be turned into its repr without a word.
        sid = obj.get("id", f"line{line}")
        if isinstance(sid, bool) or not isinstance(sid, (str, int)) or not str(sid).strip():
            raise DataError("id must be a non-empty string", path=path, line=line, column="id")
        statements.append({"id": str(sid), "text": obj["text"].strip(),
                           "label": obj["label"].strip(), "culture": culture})
    if len({s["label"] for s in statements}) < 2:
        raise DataError("value classification needs at least two different labels", path=path)
    return statements
