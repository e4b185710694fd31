"""Where the SFT start-up goes: py-spy on every Ray process of one Ray Train + DeepSpeed run,
from submitting it to its first optimizer step.

    .venv/bin/pip install py-spy
    python -m ray_jobs.benchmarks.sft_startup_profile --out docs/benchmarks/sft_startup_profile.json

Starts a local Ray, submits the SFT stage the throughput benchmark runs (tiny Llama, 2 workers,
ZeRO-2) and attaches ``py-spy record --idle`` to each Ray actor process as soon as it has its
name (TrainController, RayTrainWorker, ...). At the first step it stops the profilers and prints
a timeline (when each process was born and named, relative to the submission) and the top
inclusive frames of a worker's main thread and training thread, in seconds of wall clock.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from culture_rl.config import ModelConfig, ResourcesConfig, WorldConfig
from ray_jobs.benchmarks.arguments import positive_int
from ray_jobs.benchmarks.collect import write_results
from ray_jobs.benchmarks.sft_throughput import ZERO_STAGES, make_job

RATE = 50  # py-spy samples per second


def top_frames(raw: Path, thread_pattern: str, count: int) -> tuple[float, list[tuple[float, str]]]:
    """Inclusive seconds per frame (line numbers dropped) in the threads matching a pattern."""
    inclusive: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text("utf-8", errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        if not n.isdigit() or not re.search(thread_pattern, frames[0]):
            continue
        total += int(n)
        for key in {re.sub(r":\d+\)$", ")", f) for f in frames[1:]}:
            inclusive[key] += int(n)
    boring = ("threading.py", "<frozen importlib", "thread_runner.py", "worker_group/worker.py",
              "_internal/util.py", "default_worker.py", "Worker.main_loop")
    rows = [(v / RATE, k) for k, v in inclusive.most_common()
            if not any(b in k for b in boring)]
    return total / RATE, rows[:count]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zero-stage", type=int, choices=ZERO_STAGES, default=2)
    parser.add_argument("--top", type=positive_int, default=25, help="frames shown per thread")
    parser.add_argument("--out", help="write the timeline and profiles as JSON here")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(__file__).resolve().parents[2] / ".venv/bin/py-spy")
    import psutil

    from culture_rl.data.synthetic import generate_world
    from culture_rl.distributed.cluster import connect
    from culture_rl.models.loading import build_tiny_model
    from culture_rl.train.sft import run_stage

    folder = Path(tempfile.mkdtemp(prefix="culture_rl_startup_"))
    world = generate_world(WorldConfig())
    model_path = str(build_tiny_model(ModelConfig(), world.corpus, folder / "tiny", 0))
    connect(None)
    job = make_job(folder, f"zero{args.zero_stage}", model_path, world.corpus, 8,
                   args.zero_stage, 12)
    events: list[tuple[float, str]] = []
    profilers: dict[int, tuple[str, Path, subprocess.Popen]] = {}
    born: set[int] = set()
    done = threading.Event()

    def watch() -> None:
        me = psutil.Process()
        while not done.is_set():
            for child in me.children(recursive=True):
                try:
                    cmd = " ".join(child.cmdline())
                    created = child.create_time()
                except psutil.Error:
                    continue
                if "default_worker.py" in cmd and child.pid not in born:
                    born.add(child.pid)
                    events.append((created, f"process {child.pid} born"))
                if (cmd.startswith("ray::") and child.pid not in profilers
                        and "IDLE" not in cmd and "Agent" not in cmd):
                    name = cmd.split()[0][5:]
                    raw = folder / f"{name}_{child.pid}.txt".replace("/", "_")
                    events.append((time.time(), f"process {child.pid} is {name}"))
                    profilers[child.pid] = (name, raw, subprocess.Popen(
                        [py_spy, "record", "-p", str(child.pid), "-r", str(RATE), "--idle",
                         "--threads", "-f", "raw", "-o", str(raw), "--nonblocking"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            if job.metrics_path.is_file() and '"loss"' in job.metrics_path.read_text("utf-8"):
                events.append((time.time(), "first optimizer step logged"))
                for _, _, proc in profilers.values():
                    proc.send_signal(2)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    submitted = time.time()
    run_stage(job, ResourcesConfig(num_workers=2, cpus_per_worker=1))
    watcher.join(timeout=60)
    done.set()
    for _, _, proc in profilers.values():
        proc.wait(timeout=60)
    rows = [json.loads(line) for line in job.metrics_path.read_text("utf-8").splitlines() if line]
    first_step = min(r["time"] for r in rows if "loss" in r)

    results: dict = {"startup_s": round(first_step - submitted, 2), "timeline": [],
                     "profiles": {}}
    print(f"\nstart-up {first_step - submitted:.1f} s (submit -> first step logged)\n")
    for when, what in sorted(events):
        results["timeline"].append([round(when - submitted, 2), what])
        print(f"{when - submitted:6.2f} s  {what}")
    workers = [(n, raw) for n, raw, _ in profilers.values() if n.startswith("RayTrainWorker")]
    controller = [(n, raw) for n, raw, _ in profilers.values() if n.startswith("TrainController")]
    for label, (name, raw), pattern in (
            [("worker training thread", workers[0], r"TrainingThread"),
             ("worker main thread", workers[0], r"MainThread")] if workers else []) + (
            [("controller event loop", controller[0], r"AsyncIO")] if controller else []):
        if not raw.is_file():
            continue
        total, frames = top_frames(raw, pattern, args.top)
        results["profiles"][label] = {"process": name, "seconds": total,
                                      "top_inclusive": [[round(s, 2), f] for s, f in frames]}
        print(f"\n{label} ({name}): {total:.1f} s sampled")
        for seconds, frame in frames:
            print(f"{seconds:7.2f} s  {frame[:130]}")
    write_results(args.out, results)
    return results


if __name__ == "__main__":
    main()
