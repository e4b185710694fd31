"""Rollout throughput: batched, KV-cached generation in a RolloutWorker actor against
one-prompt-at-a-time generation, on the same prompts and sampling settings, tokens/s by batch
size -- in one run, batch sizes interleaved within each repeat, so load from other users of the
machine falls on all of them alike.

    python -m ray_jobs.benchmarks.rollout_throughput --out docs/benchmarks/rollout_throughput.json

The policy is the quickstart-shaped tiny Llama, untrained (its answers rarely stop early, so
every batch size generates about the same number of tokens). Tokens are the generated ones up to
and including the first end-of-sequence token. Median and spread (min-max) over ``--repeats``.

With ``--backends auto`` (the default) a machine with a GPU and vLLM installed also gets a
vLLM row: a second worker with ``rollout.backend: vllm`` generating the whole prompt list in one
call (vLLM schedules its own batches), each worker on half the GPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from ray_jobs.benchmarks.arguments import positive_int, positive_ints
from ray_jobs.benchmarks.collect import finish

QUICKSTART = str(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,4,16,64", type=positive_ints,
                        help="comma-separated prompts per generate() call (1: one at a time)")
    parser.add_argument("--prompts", type=positive_int, default=64, help="prompts per measurement")
    parser.add_argument("--max-new-tokens", type=positive_int, default=32)
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="timed passes per batch size")
    parser.add_argument("--backends", default="auto",
                        help="'auto' (hf, plus vllm where vLLM and a GPU are present), 'hf' or "
                        "'hf,vllm'")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    with_vllm = _wants_vllm(parser, args.backends)

    import ray

    from culture_rl.config import load_config
    from culture_rl.data import prompts as templates
    from culture_rl.models.loading import build_tiny_model
    from culture_rl.inference.rollout import RolloutWorker, SamplingParams
    from culture_rl.data.align_data import load_align_data

    folder = Path(tempfile.mkdtemp(prefix="culture_rl_rollout_bench_"))
    config = load_config(QUICKSTART, [f"run.storage_path={folder}", "run.name=bench"])
    data = load_align_data(config, write_world=False)
    policy = str(build_tiny_model(config.model, data.corpus, folder / "policy", 0))
    cues = (data.split["train"] * (args.prompts // max(len(data.split["train"]), 1) + 1))
    prompts = [templates.association_prompt(c) for c in cues[:args.prompts]]
    cpus = os.cpu_count() or 2
    batches = args.batches
    results: dict = {"machine": {"cpus": cpus, "load_average_1m": os.getloadavg()[0]},
                     "settings": {"prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
                                  "repeats": args.repeats, "policy": "untrained tiny Llama "
                                  "(quickstart shape)", "actor_cpus": cpus},
                     "batches": {}}
    import torch

    # On a GPU machine the actor takes one GPU (Ray hides GPUs from actors that ask for none)
    # and generates in bf16; the same batch sizes, the same table.
    gpus = 1 if torch.cuda.is_available() else 0
    dtype = "bfloat16" if gpus else "float32"
    results["machine"].update(gpus=gpus, dtype=dtype,
                              device_name=torch.cuda.get_device_name(0) if gpus else "cpu")
    ray.init(num_cpus=cpus, num_gpus=gpus, include_dashboard=False, configure_logging=False)
    share = gpus / 2 if with_vllm else gpus  # both workers on the one GPU
    try:
        workers = {"hf": RolloutWorker.options(num_cpus=cpus / (2 if with_vllm else 1),
                                               num_gpus=share).remote(
            policy, "hf", dtype, False, cpus)}
        if with_vllm:
            workers["vllm"] = RolloutWorker.options(num_cpus=cpus / 2, num_gpus=share).remote(
                policy, "vllm", dtype, False, 1, gpu_memory_utilization=share * 0.8)
        # Row key -> (worker, prompts per call); vLLM takes the whole list in one call.
        rows = {batch: ("hf", batch) for batch in batches}
        if with_vllm:
            rows["vllm"] = ("vllm", len(prompts))

        def run(row) -> tuple[float, int]:
            backend, batch = rows[row]
            params = SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens,
                                    batch_size=batch)
            start = time.perf_counter()
            rollout = ray.get(workers[backend].generate.remote(prompts, params, 0))
            return time.perf_counter() - start, int(rollout.response_mask.sum())

        for row in rows:  # warm-up: imports, allocator, the first KV caches
            run(row)
        timings: dict = {row: [] for row in rows}
        for _ in range(args.repeats):
            for row in rows:
                timings[row].append(run(row))
    finally:
        ray.shutdown()
    one = statistics.median(tokens / seconds for seconds, tokens in timings[batches[0]])
    lines = ["| prompts per call | tokens/s median (min-max) | tokens per pass | vs one at a time |",
             "|---|---|---|---|"]
    for row, runs in timings.items():
        rates = [tokens / seconds for seconds, tokens in runs]
        median = statistics.median(rates)
        results["batches"][row] = {"tokens_per_s": median, "min": min(rates), "max": max(rates),
                                   "tokens": statistics.median(t for _, t in runs),
                                   "ratio_vs_one_at_a_time": median / one}
        label = f"vLLM, all {len(prompts)}" if row == "vllm" else str(row)
        lines.append(f"| {label} | {median:.0f} ({min(rates):.0f}-{max(rates):.0f}) | "
                     f"{statistics.median(t for _, t in runs):.0f} | {median / one:.2f}x |")
    return finish(results, f"rollout: {len(prompts)} prompts, {args.max_new_tokens} new tokens, "
                  f"sampled, one actor with {cpus} CPUs, {args.repeats} repeats",
                  "\n".join(lines), args.out)


def _wants_vllm(parser: argparse.ArgumentParser, backends: str) -> bool:
    """Whether to add the vLLM row; asking for it where it cannot run is a usage error."""
    import importlib.util

    import torch

    present = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()
    if backends == "auto":
        return present
    chosen = backends.split(",")
    if "hf" not in chosen or not set(chosen) <= {"hf", "vllm"}:
        parser.error(f"--backends: expected 'auto', 'hf' or 'hf,vllm', not {backends!r}")
    if "vllm" in chosen and not present:
        parser.error("--backends: the vllm row needs vLLM installed and a GPU")
    return "vllm" in chosen


if __name__ == "__main__":
    main()
