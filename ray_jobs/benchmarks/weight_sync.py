"""Weight sync: bucketed trainer -> generator sync over Ray against a raw in-process copy of
the same bytes and against per-tensor sync, for tiny Llamas of ~10M, 50M and 200M parameters --
in one run, repeats interleaved, so the ratios are fair on a shared, noisy machine.

    python -m ray_jobs.benchmarks.weight_sync --out docs/benchmarks/weight_sync.json

"raw copy" is the floor: ``copy_`` of every exported tensor into a preallocated twin in the
trainer process. A same-node sync (the default transport here) packs each bucket into a
``/dev/shm`` file and the receivers copy out of it, overlapped with packing the next bucket;
``object_store`` rows force the cross-node path (one ``ray.put`` per bucket) for comparison.
``shared_pages`` rows let the receivers use the ``/dev/shm`` pages as their weights
(``rollout.sync_share_pages``, the loops' default): one copy per sync, whatever the receivers.
Goal: bucketed sync to one generator within 2x the raw copy. Times are medians over ``--repeats`` with the spread
(min-max) beside them; every method is warmed up once first (page faults, actor start).
"""

from __future__ import annotations

import argparse
import statistics
import time

from ray_jobs.benchmarks.collect import finish

# hidden, intermediate, layers, heads, vocab; ~params with tied embeddings
SIZES = {
    "10M": (256, 768, 6, 4, 16000),
    "50M": (512, 1536, 8, 8, 32000),
    "200M": (1024, 2816, 12, 16, 32000),
}


def llama_config(size: str):
    from transformers import LlamaConfig

    hidden, intermediate, layers, heads, vocab = SIZES[size]
    return LlamaConfig(hidden_size=hidden, intermediate_size=intermediate,
                       num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=heads, vocab_size=vocab, tie_word_embeddings=True)


def build(config, dtype, empty: bool):
    """The model; ``empty``: uninitialised storage (a receiver is overwritten anyway)."""
    import torch
    from transformers import LlamaForCausalLM

    if empty:
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
        model = model.to_empty(device="cpu")
    else:
        model = LlamaForCausalLM(config)
    return model.to(dtype)


def make_receiver_class():
    import ray

    from culture_rl.distributed.weight_sync import WeightReceiver

    @ray.remote(num_cpus=0)
    class Generator(WeightReceiver):
        def __init__(self, config, dtype):
            self.model = build(config, dtype, empty=True)

        def ready(self) -> bool:
            return True

    return Generator


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}


def bench_size(size: str, dtype, bucket_mb: float, repeats: int, Generator) -> dict:
    import ray
    import torch

    from culture_rl.distributed.weight_sync import iter_export_tensors, sync_weights

    config = llama_config(size)
    model = build(config, dtype, empty=False)
    params = sum(t.numel() for _, t in iter_export_tensors(model))
    nbytes = sum(t.numel() * t.element_size() for _, t in iter_export_tensors(model))
    receivers = [Generator.remote(config, dtype) for _ in range(2)]
    # Their own receivers: one that shares the pages must not be written by a copying sync
    # in between (it would get fresh memory each time, not the copy this row measures).
    sharing = [Generator.remote(config, dtype) for _ in range(2)]
    ray.get([r.ready.remote() for r in receivers + sharing])
    twin = [torch.empty_like(t) for _, t in iter_export_tensors(model)]

    def raw_copy() -> dict:
        start = time.perf_counter()
        with torch.no_grad():
            for target, (_, tensor) in zip(twin, iter_export_tensors(model)):
                target.copy_(tensor)
        return {"seconds": time.perf_counter() - start}

    store = {"transport": "object_store"}
    methods = {  # receivers are on this node: the default transport is shared memory
        "raw_copy": raw_copy,
        "bucketed_1_receiver": lambda: sync_weights(model, receivers[:1], bucket_mb),
        "bucketed_2_receivers": lambda: sync_weights(model, receivers, bucket_mb),
        "shared_pages_1_receiver": lambda: sync_weights(model, sharing[:1], bucket_mb,
                                                        share_pages=True),
        "shared_pages_2_receivers": lambda: sync_weights(model, sharing, bucket_mb,
                                                         share_pages=True),
        "object_store_1_receiver": lambda: sync_weights(model, receivers[:1], bucket_mb,
                                                        **store),
        "object_store_2_receivers": lambda: sync_weights(model, receivers, bucket_mb, **store),
        "per_tensor_1_receiver": lambda: sync_weights(model, receivers[:1], bucket_mb,
                                                      mode="per_tensor"),
    }
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    info: dict[str, dict] = {}
    for name, method in methods.items():  # warm-up: first-touch page faults, worker caches
        info[name] = method()
    for _ in range(repeats):  # interleaved: a noisy neighbour slows every method alike
        for name, method in methods.items():
            seconds[name].append(method()["seconds"])
    for receiver in receivers + sharing:
        ray.kill(receiver)
    del twin

    raw = statistics.median(seconds["raw_copy"])
    runs = {}
    for name in methods:
        runs[name] = spread(seconds[name])
        runs[name]["ratio_vs_raw_copy"] = runs[name]["median"] / raw
        runs[name]["gb_per_s"] = nbytes / runs[name]["median"] / 1e9
        if "rpcs" in info[name]:
            runs[name].update(rpcs=info[name]["rpcs"], buckets=info[name]["buckets"])
    return {"parameters": params, "bytes": nbytes, "tensors": len(list(
        iter_export_tensors(model))), "runs": runs}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10M,50M,200M",
                        help=f"comma-separated model sizes from {list(SIZES)}")
    parser.add_argument("--bucket-mb", type=float, default=64.0, help="bucket size in MiB")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5, help="timed syncs per method")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)

    import os

    import ray
    import torch

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    Generator = make_receiver_class()
    dtype = getattr(torch, args.dtype)
    results: dict = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                 "load_average_1m": os.getloadavg()[0]},
                     "bucket_mb": args.bucket_mb, "dtype": args.dtype, "repeats": args.repeats,
                     "sizes": {}}
    try:
        for size in args.sizes.split(","):
            print(f"{size} ...", flush=True)
            results["sizes"][size] = bench_size(size, dtype, args.bucket_mb, args.repeats,
                                                 Generator)
    finally:
        ray.shutdown()

    lines = ["| model | MB | method | RPCs | median s (min-max) | GB/s | vs raw copy |",
             "|---|---|---|---|---|---|---|"]
    for size, result in results["sizes"].items():
        label = f"{size} ({result['parameters'] / 1e6:.0f}M params, {result['tensors']} tensors)"
        for name, run in result["runs"].items():
            lines.append(f"| {label} | {result['bytes'] / 1e6:.0f} | {name} | "
                         f"{run.get('rpcs', '-')} | {run['median']:.3f} "
                         f"({run['min']:.3f}-{run['max']:.3f}) | {run['gb_per_s']:.2f} | "
                         f"{run['ratio_vs_raw_copy']:.2f}x |")
    return finish(results, f"{args.dtype}, {args.bucket_mb:g} MiB buckets, {args.repeats} "
                  "repeats", "\n".join(lines), args.out)


if __name__ == "__main__":
    main()
