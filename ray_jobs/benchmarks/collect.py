"""Collect every benchmark's JSON (``docs/benchmarks/<name>.json``) into one file.

    python -m ray_jobs.benchmarks.collect docs/benchmarks docs/benchmarks.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def collect(folder: Path) -> dict:
    return {path.stem: json.loads(path.read_text("utf-8"))
            for path in sorted(folder.glob("*.json"))}


def main(argv: list[str] | None = None) -> None:
    folder, out = (Path(a) for a in (argv or sys.argv[1:]))
    results = collect(folder)
    out.write_text(json.dumps(results, indent=2) + "\n", "utf-8")
    print(f"{len(results)} benchmarks ({', '.join(results)}) -> {out}")


if __name__ == "__main__":
    main()


def write_results(out: str | Path | None, results: dict) -> None:
    """A benchmark's ``--out FILE``: its figures as JSON (folders made as needed)."""
    if not out:
        return
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(results, indent=2), "utf-8")
