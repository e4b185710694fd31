"""Every benchmark of `make bench` runs end to end at its smallest settings (real Ray, real
DeepSpeed, each in its own process as `make bench` runs them), prints its table and writes JSON
that `collect` gathers. The figures themselves are for docs/benchmarks.md, not for assertions:
this keeps the commands there working."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

SMALLEST = {
    "ppo_scaling_model": [],
    "reward_pool": ["--batches", "32", "--repeats", "1"],
    "weight_sync": ["--sizes", "10M", "--repeats", "1"],
    "rollout_throughput": ["--batches", "1,4", "--prompts", "4", "--max-new-tokens", "4",
                           "--repeats", "1"],
    "sft_throughput": ["--models", "tiny", "--steps", "10", "--warmup-steps", "0",
                       "--stages", "2", "--chunked-head-stages", ""],
    "ppo_step": ["--steps", "1", "--prompts", "2", "--samples-per-prompt", "2",
                 "--max-new-tokens", "4", "--mini-batch", "4", "--micro-batch", "4"],
}


def test_these_are_the_benchmarks_make_bench_runs():
    makefile = open(os.path.join(REPO, "Makefile"), encoding="utf-8").read()
    line = next(line for line in makefile.splitlines() if line.startswith("BENCHMARKS ="))
    assert set(line.split("=", 1)[1].split()) == set(SMALLEST)


@pytest.fixture(scope="module")
def bench_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    for name, argv in SMALLEST.items():
        run = subprocess.run([sys.executable, "-m", f"ray_jobs.benchmarks.{name}", *argv,
                              "--out", str(folder / f"{name}.json")], cwd=REPO,
                             capture_output=True, text=True, timeout=600,
                             env={**os.environ, "PYTHONPATH": REPO})
        assert run.returncode == 0, f"{name}:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
        assert "|---|" in run.stdout, f"{name} printed no table"
    return folder


def figures(folder, name) -> dict:
    return json.loads((folder / f"{name}.json").read_text("utf-8"))


def test_each_benchmark_writes_its_side_by_side_figures(bench_folder):
    ppo = figures(bench_folder, "ppo_step")
    assert set(ppo["runs"]) == {"ours", "ours_overlap", "naive"}
    for run in ppo["runs"].values():
        assert run["samples_per_s"] > 0
        assert {f"seconds_{phase}" for phase in ("rollout", "reward", "reference", "advantage",
                                                 "train", "sync")} <= set(run)
    assert ppo["ratio_ours_vs_naive"] == pytest.approx(
        ppo["runs"]["ours"]["samples_per_s"] / ppo["runs"]["naive"]["samples_per_s"], rel=1e-6)

    sft = figures(bench_folder, "sft_throughput")
    runs = sft["models"]["tiny"]["runs"]
    assert set(runs) == {"single_process", "ray_zero2"}
    assert runs["ray_zero2"]["tokens_per_s"] > 0 and runs["ray_zero2"]["startup_s"] > 0
    assert 0 < runs["ray_zero2"]["fraction_of_peak"] < 1

    sync = figures(bench_folder, "weight_sync")["sizes"]["10M"]
    assert {"raw_copy", "bucketed_1_receiver", "per_tensor_1_receiver"} <= set(sync["runs"])
    assert sync["parameters"] > 9_000_000

    pool = figures(bench_folder, "reward_pool")["batches"]["32"]["runs"]
    assert pool["pool_1_scorer"]["ratio_vs_1_scorer"] == 1.0
    assert pool["pool_2_scorers"]["samples_per_s"] > 0

    rollout = figures(bench_folder, "rollout_throughput")["batches"]
    assert set(rollout) == {"1", "4"} and rollout["1"]["ratio_vs_one_at_a_time"] == 1.0

    assert figures(bench_folder, "ppo_scaling_model")["scenarios"]


def test_collect_gathers_every_benchmark(bench_folder, tmp_path):
    out = tmp_path / "benchmarks.json"
    subprocess.run([sys.executable, "-m", "ray_jobs.benchmarks.collect", str(bench_folder),
                    str(out)], cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": REPO})
    assert set(json.loads(out.read_text("utf-8"))) == set(SMALLEST)
