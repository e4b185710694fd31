"""Collect every benchmark's JSON (``docs/benchmarks/<name>.json``) into one file.

    python -m ray_jobs.benchmarks.collect docs/benchmarks docs/benchmarks.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ray_jobs.benchmarks.arguments import existing_path


def collect(folder: Path) -> dict:
    """Every ``<name>.json`` in ``folder`` by name; a file that is not JSON is a ValueError
    naming it and the line."""
    results = {}
    for path in sorted(folder.glob("*.json")):
        try:
            results[path.stem] = json.loads(path.read_text("utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {err.lineno}: not JSON ({err.msg})") from None
    return results


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Collect the benchmarks' JSON files into one.")
    parser.add_argument("folder", type=existing_path, help="folder of <benchmark>.json files")
    parser.add_argument("out", help="the combined JSON file to write")
    args = parser.parse_args(argv)
    try:
        results = collect(Path(args.folder))
    except ValueError as err:
        parser.error(str(err))
    if not results:
        parser.error(f"{args.folder}: no <benchmark>.json files")
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n", "utf-8")
    print(f"{len(results)} benchmarks ({', '.join(results)}) -> {args.out}")


if __name__ == "__main__":
    main()
