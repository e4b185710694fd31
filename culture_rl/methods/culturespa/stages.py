"""How a CultureSPA stage is kept on disk: ``data.jsonl`` and, written last, ``manifest.json``
with a key of everything the stage depends on, so a rerun reuses a finished stage and redoes a
half-written or outdated one."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable, Sequence

MANIFEST = "manifest.json"


def stage_key(*parts) -> str:
    """A short hash of everything a stage depends on."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    partial.replace(path)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def run_step(folder: Path, key: str, build: Callable[[], tuple[list[dict], dict]]
             ) -> tuple[list[dict], dict]:
    """A stage's rows and statistics: read back when its manifest carries ``key``, else built
    and written (data first, the manifest last, each by rename)."""
    manifest_path = folder / MANIFEST
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text("utf-8"))
        if manifest.get("key") == key:
            print(f"[spa] {folder.name}: already done ({manifest['rows']} rows in "
                  f"{folder / 'data.jsonl'}), skipped", flush=True)
            return _read_jsonl(folder / "data.jsonl"), manifest["stats"]
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows, stats = build()
    _write_jsonl(folder / "data.jsonl", rows)
    manifest = {"key": key, "rows": len(rows), "stats": stats,
                "seconds": round(time.perf_counter() - started, 2)}
    partial = manifest_path.with_name(MANIFEST + ".partial")
    partial.write_text(json.dumps(manifest, indent=2, ensure_ascii=False), "utf-8")
    partial.replace(manifest_path)
    print(f"[spa] {folder.name}: {len(rows)} rows in {manifest['seconds']:.1f} s", flush=True)
    return rows, stats
