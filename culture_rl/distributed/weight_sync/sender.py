"""The trainer's side of the weight sync: :func:`sync_weights` over shared memory or Ray's
object store, dispatching to :mod:`culture_rl.distributed.weight_sync.collective` for the
collective transport."""

from __future__ import annotations

import os
import time
from typing import Literal

import torch

from culture_rl.distributed.weight_export import iter_export_tensors
from culture_rl.distributed.weight_sync.buckets import (SharedStaging, WeightSyncError,
                                                        await_acks, make_buckets)
from culture_rl.distributed.weight_sync.collective import (default_collective_backend,
                                                           sync_collective)



_SHARED: SharedStaging | None = None  # this process' /dev/shm files, made on first use
_NODE_OF: dict[str, str] = {}  # receiver actor id -> node id (asked once per receiver)


def _all_on_this_node(receivers: list, timeout_s: float = 600) -> bool:
    import ray

    missing = [r for r in receivers if r._actor_id.hex() not in _NODE_OF]
    try:
        nodes = ray.get([r.node_id.remote() for r in missing], timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise WeightSyncError(f"weight sync: {len(missing)} receivers did not say which node "
                              f"they are on within {timeout_s:g} s") from None
    for receiver, node in zip(missing, nodes):
        _NODE_OF[receiver._actor_id.hex()] = node
    here = ray.get_runtime_context().get_node_id()
    return all(_NODE_OF[r._actor_id.hex()] == here for r in receivers)


def _shared_staging() -> SharedStaging:
    global _SHARED
    if _SHARED is None:
        _SHARED = SharedStaging()
    return _SHARED


def close_shared_staging() -> None:
    """Remove this process' ``/dev/shm`` files (call before the process is killed: a killed
    actor never runs its exit hooks)."""
    global _SHARED
    if _SHARED is not None:
        _SHARED.close()
        _SHARED = None


TRANSPORTS = ("auto", "shared_memory", "object_store", "collective")


def sync_weights(model: torch.nn.Module, receivers: list, bucket_mb: float,
                 mode: Literal["bucketed", "per_tensor"] = "bucketed",
                 gather_zero3: bool = False, timeout_s: float = 600,
                 transport: Literal["auto", "shared_memory", "object_store",
                                    "collective"] = "auto",
                 share_pages: bool = False,
                 collective_backend: Literal["auto", "nccl", "gloo"] = "auto") -> dict:
    """Send the model's weights to every receiver actor (``receive_bucket`` remote method).

    Buckets are pipelined: each is sent to all receivers without waiting, so packing the next
    bucket overlaps the receivers' copies; everything is awaited at the end. Transport: with
    every receiver on this node (``auto`` checks), buckets are packed into ``/dev/shm`` files
    that the receivers read in place; otherwise each bucket is put once into Ray's object store
    and shared by all receivers. ``collective`` broadcasts each bucket over a process group of
    the trainer and the receivers (see :mod:`culture_rl.distributed.weight_sync.collective`; built
    at the first such sync and cached per receiver list, its ``close_sync_groups`` closes
    them): ``collective_backend`` ``auto`` picks NCCL when the model's weights are on a GPU
    (every receiver's model must then be on a GPU of its own) and gloo otherwise.
    ``mode="per_tensor"`` sends one bucket per tensor (the slow baseline). ``share_pages``
    (shared-memory transport only) lets the receivers use the files' pages as their weights
    instead of copying them out (see :func:`apply_bucket`): one copy per sync instead of
    1 + receivers, and one copy of the weights in memory for all of them; call it only while
    the receivers are not generating. Returns seconds, bytes (sent
    once, whatever the number of receivers), buckets, tensors, rpcs and the transport used.
    Under ZeRO-3 every rank calls this; ranks other than 0 pass ``receivers=[]``.
    """
    import ray

    if mode not in ("bucketed", "per_tensor"):
        raise ValueError(f"mode must be 'bucketed' or 'per_tensor', not {mode!r}")
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, not "
                         f"{transport!r}")
    if collective_backend not in ("auto", "nccl", "gloo"):
        raise ValueError(f"collective_backend must be auto, nccl or gloo, not "
                         f"{collective_backend!r}")
    start = time.perf_counter()
    tensors = iter_export_tensors(model, gather_zero3)
    if not receivers:  # a ZeRO-3 rank other than 0: take part in the gathers, send nothing
        for _ in tensors:
            pass
        return {"seconds": time.perf_counter() - start, "bytes": 0, "buckets": 0,
                "tensors": 0, "rpcs": 0, "transport": "none"}
    bucket_bytes = int(bucket_mb * 2 ** 20) if mode == "bucketed" else 0
    if transport == "collective":
        backend = (default_collective_backend(model) if collective_backend == "auto"
                   else collective_backend)
        return sync_collective(model, tensors, receivers, bucket_bytes, timeout_s, backend,
                                start)
    if transport == "auto":
        usable = os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK)
        transport = ("shared_memory" if usable and _all_on_this_node(receivers, timeout_s)
                     else "object_store")
    shared = _shared_staging() if transport == "shared_memory" else None
    acks: list[list] = []  # per bucket, one ObjectRef per receiver
    sent_bytes = sent_tensors = 0
    for bucket in make_buckets(tensors, bucket_bytes, transient=True, shared=shared,
                               share_pages=share_pages):
        # Object store: one put per bucket, shared by all receivers (N receivers cost one copy
        # into shared memory, not N serialisations); the put copies, so the transient bucket
        # may be reused. Shared memory: the bucket is already in its file; the RPC is small.
        ref = bucket if shared is not None else ray.put(bucket)
        acks.append([receiver.receive_bucket.remote(ref) for receiver in receivers])
        sent_bytes += bucket.nbytes
        sent_tensors += len(bucket.names)
    await_acks(acks, receivers, sent_tensors, timeout_s, 0)
    return {"seconds": time.perf_counter() - start, "bytes": sent_bytes, "buckets": len(acks),
            "tensors": sent_tensors, "rpcs": len(acks) * len(receivers),
            "transport": transport}
