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
``collective`` rows broadcast each bucket over a process group of the driver and the receivers
(``rollout.sync_transport=collective``; gloo on CPUs), each row with receivers of its own (a
group is cached per receiver set). Goal: bucketed sync to one generator within 2x the raw copy.
Times are medians over ``--repeats`` with the spread (min-max) beside them; every method is
warmed up once first (page faults, actor start, group set-up).

With a GPU (``torch.cuda.is_available()``) the sender's model and the receivers' are on CUDA,
bfloat16 by default, the raw copy is device to device, and there are no ``shared_pages`` rows
(host pages cannot be a GPU's weights). Receivers take whole GPUs when there are enough for
all of them besides the sender's (which is the last one), else fractions (on one GPU everyone
shares it). The collective rows use NCCL when no two members of a group share a GPU; NCCL
refuses that, and the rows then fall back to gloo through host memory (the row name says which).
"""

from __future__ import annotations

import argparse
import statistics
import time

from ray_jobs.benchmarks.arguments import choices_of, positive_float, positive_int
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


def build(config, dtype, empty: bool, device: str = "cpu"):
    """The model; ``empty``: uninitialised storage (a receiver is overwritten anyway)."""
    import torch
    from transformers import LlamaForCausalLM

    if empty:
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
        model = model.to_empty(device=device)
    else:
        model = LlamaForCausalLM(config)
    return model.to(device=device, dtype=dtype)


def gpu_plan(gpus: int, receivers: int) -> dict:
    """Where the GPU run puts things: the sender on the last GPU, the Ray actors on the others
    (whole GPUs when there are enough, else equal fractions that pack into them); on one GPU
    everyone shares it."""
    import math

    def share(count: int) -> float:  # 1/count, rounded down to Ray's 0.0001 resolution
        return math.floor(10_000 / count) / 10_000

    if gpus <= 1:
        return {"sender_gpu": 0, "ray_gpus": 1, "per_receiver": share(receivers)}
    ray_gpus = gpus - 1
    return {"sender_gpu": gpus - 1, "ray_gpus": ray_gpus,
            "per_receiver": share(math.ceil(receivers / ray_gpus))}


def make_receiver_class():
    import ray

    from culture_rl.distributed.weight_sync import WeightReceiver

    @ray.remote(num_cpus=0)
    class Generator(WeightReceiver):
        def __init__(self, config, dtype, device: str = "cpu"):
            self.model = build(config, dtype, empty=True, device=device)

        def receive_bucket(self, bucket) -> int:
            applied = super().receive_bucket(bucket)
            if self.model.device.type == "cuda":  # the ack means the copy has landed
                import torch

                torch.cuda.synchronize()
            return applied

        def ready(self) -> bool:
            return True

    return Generator


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}


def collective_backend(model, groups: list[list], bucket_mb: float) -> tuple[str, str]:
    """NCCL for a model on a GPU when every group can have it (this also warms the groups up),
    else gloo; and why."""
    from culture_rl.distributed.weight_sync import WeightSyncError, close_sync_groups, \
        sync_weights
    from culture_rl.distributed.weight_sync.collective import default_collective_backend

    if default_collective_backend(model) != "nccl":
        return "gloo", "weights on the CPU"
    try:
        for group in groups:
            sync_weights(model, group, bucket_mb, transport="collective",
                         collective_backend="nccl")
    except WeightSyncError as error:
        close_sync_groups()
        return "gloo", f"NCCL refused: {error}"
    return "nccl", "every member of each group on a GPU of its own"


def bench_size(size: str, dtype, bucket_mb: float, repeats: int, Generator,
               gpu: dict | None = None) -> dict:
    import ray
    import torch

    from culture_rl.distributed.weight_sync import close_sync_groups, iter_export_tensors, \
        sync_weights

    config = llama_config(size)
    device = f"cuda:{gpu['sender_gpu']}" if gpu else "cpu"
    if gpu:
        torch.cuda.set_device(device)
    model = build(config, dtype, empty=False, device=device)
    params = sum(t.numel() for _, t in iter_export_tensors(model))
    nbytes = sum(t.numel() * t.element_size() for _, t in iter_export_tensors(model))

    def receiver():
        if gpu:
            return Generator.options(num_gpus=gpu["per_receiver"]).remote(config, dtype, "cuda")
        return Generator.remote(config, dtype)

    receivers = [receiver() for _ in range(2)]
    # Their own receivers: one that shares the pages must not be written by a copying sync
    # in between (it would get fresh memory each time, not the copy this row measures).
    # No such rows on GPUs: host pages cannot be a GPU's weights.
    sharing = [] if gpu else [receiver() for _ in range(2)]
    # A collective group is cached per receiver set, and a new one replaces any that shares
    # a receiver: each collective row has receivers of its own.
    broadcast = [[receiver()], [receiver(), receiver()]]
    everyone = receivers + sharing + [r for group in broadcast for r in group]
    ray.get([r.ready.remote() for r in everyone])
    twin = [torch.empty_like(t) for _, t in iter_export_tensors(model)]

    def raw_copy() -> dict:
        start = time.perf_counter()
        with torch.no_grad():
            for target, (_, tensor) in zip(twin, iter_export_tensors(model)):
                target.copy_(tensor)
        if gpu:
            torch.cuda.synchronize()
        return {"seconds": time.perf_counter() - start}

    backend, why = collective_backend(model, broadcast, bucket_mb)
    collective = {"transport": "collective", "collective_backend": backend}
    suffix = f"_{backend}" if gpu else ""  # on CPUs it is always gloo
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
        f"collective{suffix}_1_receiver": lambda: sync_weights(model, broadcast[0], bucket_mb,
                                                               **collective),
        f"collective{suffix}_2_receivers": lambda: sync_weights(model, broadcast[1],
                                                                bucket_mb, **collective),
        "per_tensor_1_receiver": lambda: sync_weights(model, receivers[:1], bucket_mb,
                                                      mode="per_tensor"),
    }
    if gpu:
        del methods["shared_pages_1_receiver"], methods["shared_pages_2_receivers"]
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    info: dict[str, dict] = {}
    for name, method in methods.items():  # warm-up: first-touch page faults, worker caches
        info[name] = method()
    for _ in range(repeats):  # interleaved: a noisy neighbour slows every method alike
        for name, method in methods.items():
            seconds[name].append(method()["seconds"])
    close_sync_groups()
    for actor in everyone:
        ray.kill(actor)
    twin.clear()  # free the copy before the next size is built

    raw = statistics.median(seconds["raw_copy"])
    runs = {}
    for name in methods:
        runs[name] = spread(seconds[name])
        runs[name]["ratio_vs_raw_copy"] = runs[name]["median"] / raw
        runs[name]["gb_per_s"] = nbytes / runs[name]["median"] / 1e9
        if "rpcs" in info[name]:
            runs[name].update(rpcs=info[name]["rpcs"], buckets=info[name]["buckets"])
    return {"parameters": params, "bytes": nbytes, "tensors": len(list(
        iter_export_tensors(model))), "collective_backend": backend,
        "collective_backend_why": why, "runs": runs}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10M,50M,200M", type=choices_of(SIZES),
                        help=f"comma-separated model sizes from {list(SIZES)}")
    parser.add_argument("--bucket-mb", type=positive_float, default=64.0, help="bucket size in MiB")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"],
                        help="default: float32 on CPUs, bfloat16 on a GPU")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed syncs per method")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)

    import os

    import ray
    import torch

    from ray_jobs.benchmarks.sft_throughput import detect_device

    device = detect_device()
    args.dtype = args.dtype or ("bfloat16" if device.gpu else "float32")
    receivers = 5 if device.gpu else 7  # see bench_size
    gpu = gpu_plan(device.count, receivers) if device.gpu else None
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False,
             **({"num_gpus": gpu["ray_gpus"]} if gpu else {}))
    Generator = make_receiver_class()
    dtype = getattr(torch, args.dtype)
    results: dict = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                 "load_average_1m": os.getloadavg()[0]},
                     "bucket_mb": args.bucket_mb, "dtype": args.dtype, "repeats": args.repeats,
                     "sizes": {}}
    if gpu:
        results["machine"].update(device=device.name, gpus=device.count, gpu_plan=gpu)
    try:
        for size in args.sizes:
            print(f"{size} ...", flush=True)
            results["sizes"][size] = bench_size(size, dtype, args.bucket_mb, args.repeats,
                                                 Generator, gpu)
            if gpu:
                print(f"collective backend: {results['sizes'][size]['collective_backend']} "
                      f"({results['sizes'][size]['collective_backend_why']})", flush=True)
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
    where = f"{device.name} x{device.count}, " if gpu else ""
    return finish(results, f"{where}{args.dtype}, {args.bucket_mb:g} MiB buckets, "
                  f"{args.repeats} repeats", "\n".join(lines), args.out)


if __name__ == "__main__":
    main()
