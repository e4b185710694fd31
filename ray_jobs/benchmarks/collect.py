"""Collect every benchmark's JSON (``docs/benchmarks/<name>.json``) into one file.

    python -m ray_jobs.benchmarks.collect docs/benchmarks docs/benchmarks.json
"""

from __future__ import annotations

import json
import os
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


def finish(results: dict, header: str, table: str, out: str | Path | None) -> dict:
    """Print a benchmark's header, the machine load at start and end (noisy neighbours show
    there) and its table; keep the table in the results and write them to ``out``."""
    machine = results["machine"]
    machine["load_average_1m_end"] = os.getloadavg()[0]
    print(f"\n{header}; load average {machine['load_average_1m']:.1f} at start, "
          f"{machine['load_average_1m_end']:.1f} at end\n\n{table}")
    results["table"] = table
    write_results(out, results)
    return results
