"""Bucketed weight sync from the policy trainer to the rollout generators.

The trainer walks its weights as the *plain Hugging Face model* names them (LoRA merged in,
ZeRO-3 shards gathered), packs consecutive same-dtype tensors into flat buckets of about
``bucket_mb`` and sends each bucket to every generator with one RPC. Per-tensor sync -- one RPC
per weight, a few hundred for a small model -- is the slow path OpenRLHF/verl users complain
about; bucketing turns it into a handful of large, memory-bound copies.

Transport: generators on the trainer's node read each bucket in place from a ``/dev/shm`` file
the trainer packed it into (one copy in, one copy out, the RPC carries only names and the path);
generators elsewhere get it through Ray's object store (``ray.put`` once per bucket, fetched
once per node). Both paths work everywhere, CPUs included. ``transport="collective"`` (the
GPU clusters' path: each bucket broadcast over a process group of the trainer and the
generators, NCCL or gloo) lives in :mod:`culture_rl.distributed.collective_sync`;
:func:`sync_weights` dispatches to it.

The walk over the trainer's weights (LoRA merge, ZeRO-3 gather, plain HF names) is
:mod:`culture_rl.distributed.weight_export`; this module packs and moves what it yields.

LoRA: the generators hold plain models, so the trainer sends ``W + delta`` for each adapted
weight (computed on the fly; the trainer's model is never modified). Sending the unmerged base
weight -- the generator never sees the adapter -- is the "LoRA weights never reach the generator"
failure we design against; ``tests/integration/test_weight_sync_ray.py`` proves they do.

ZeRO-3: every rank holds only a shard of each weight, so every rank must call
``sync_weights(engine, receivers, ..., gather_zero3=True)`` in lockstep (the gather is a
collective); only rank 0 needs receivers, the others pass ``receivers=[]`` and just take part
in the gathers.
"""

from __future__ import annotations

import math
import os
import threading
import time
import warnings
import weakref
from dataclasses import dataclass
from typing import Iterable, Iterator, Literal

import numpy as np
import torch

from culture_rl.distributed.weight_export import (unwrap_model, iter_export_tensors,  # noqa: F401
                                                  state_fingerprint)  # (re-exported)
from culture_rl.errors import CultureRLError


class WeightSyncError(CultureRLError, RuntimeError):
    """A sync that did not complete: a receiver timed out or applied the wrong weights."""


@dataclass
class Bucket:
    """One RPC's payload: consecutive tensors of one dtype, packed into one flat array.

    ``flat`` is numpy, not torch, because Ray's serializer hands the receiver a zero-copy,
    read-only view of a numpy array in the object store (a torch tensor would be pickled and
    copied). numpy has no bfloat16, so bf16 bits travel as int16 and ``dtype`` says "bfloat16".
    """

    names: list[str]
    shapes: list[tuple[int, ...]]
    dtype: str
    flat: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.flat.nbytes)

    def array(self) -> np.ndarray:
        return self.flat


_MAPPED: dict[str, np.ndarray] = {}  # receiver side: /dev/shm files mapped once per process


@dataclass
class SharedBucket:
    """A bucket whose bytes wait in a ``/dev/shm`` file on the sender's node: the RPC carries
    only names, shapes and the path, and the receiver reads the file's pages in place. Same-node
    receivers thus cost one copy in (packing) and one copy out, with no object-store put between
    them -- the put ran at about half of memcpy speed and made a sync 4x a raw copy."""

    names: list[str]
    shapes: list[tuple[int, ...]]
    dtype: str
    path: str
    nbytes: int
    # The receiver may use the file's pages as its weights instead of copying them out (CPU
    # parameters of the bucket's dtype): the next sync then rewrites them in place. Only
    # sound while receivers do not generate during a sync, as in the synchronous loops here.
    share_pages: bool = False

    def array(self) -> np.ndarray:
        mapped = _MAPPED.get(self.path)
        if mapped is None:  # a new path per staging file, so a cached map is never stale
            mapped = _MAPPED[self.path] = np.memmap(self.path, dtype=np.uint8, mode="r")
        transport = "int16" if self.dtype == "bfloat16" else self.dtype
        return mapped[:self.nbytes].view(np.dtype(transport))


class SharedStaging:
    """The sender's ``/dev/shm`` files, one per bucket index, reused from sync to sync (a sync
    waits for every receiver before returning, so nothing still copies out of them when the
    next one packs; receivers that share the pages see the next sync's weights as it packs
    them, which is the update). ``close()`` removes them; it also runs at interpreter exit."""

    def __init__(self, root: str = "/dev/shm"):
        import atexit
        import tempfile

        self.folder = tempfile.mkdtemp(prefix="culture_rl_sync_", dir=root)
        self.slots: dict[int, tuple[str, torch.Tensor]] = {}
        self.files = 0
        atexit.register(self.close)

    def slot(self, index: int, capacity: int) -> tuple[str, torch.Tensor]:
        path, buffer = self.slots.get(index, ("", None))
        if buffer is None or buffer.numel() < capacity:
            if path:
                os.unlink(path)  # receivers that mapped it keep their pages until they drop it
            self.files += 1
            path = os.path.join(self.folder, f"bucket{index}_{self.files}")
            buffer = torch.from_numpy(np.memmap(path, dtype=np.uint8, mode="w+",
                                                shape=(capacity,)))
            self.slots[index] = (path, buffer)
        return path, buffer

    def close(self) -> None:
        import shutil

        self.slots.clear()
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class BroadcastBucket:
    """A bucket of a collective sync as its RPC carries it: names, shapes and dtype only. The
    bytes follow by broadcast into the receiver's buffer, and ``received`` (set there, never
    sent) is that buffer's view in ``dtype``."""

    names: list[str]
    shapes: list[tuple[int, ...]]
    dtype: str
    nbytes: int
    received: torch.Tensor | None = None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _transport_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the bytes travel as: bf16 has no numpy equivalent, int16 has the same width."""
    return torch.int16 if dtype == torch.bfloat16 else dtype


def _as_torch(flat: np.ndarray, dtype: str) -> torch.Tensor:
    """A torch view (no copy) of a bucket's flat array, in the bucket's real dtype."""
    with warnings.catch_warnings():
        # Arrays from the object store are read-only; we only ever read from this view.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensor = torch.from_numpy(flat)
    return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor


_STAGING = threading.local()  # make_buckets(transient=True)'s staging buffer, per thread


def _new_staging(nbytes: int) -> torch.Tensor:
    """numpy-backed bytes, so a finished bucket is a numpy view without a copy (pages of the
    capacity a bucket does not fill are never touched)."""
    return torch.from_numpy(np.empty(nbytes, dtype=np.uint8))


def make_buckets(named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int, *,
                 transient: bool = False, shared: SharedStaging | None = None,
                 share_pages: bool = False) -> Iterator[Bucket | SharedBucket]:
    """Pack consecutive tensors of one dtype into flat buckets of at most ``bucket_bytes``.

    A tensor bigger than ``bucket_bytes`` gets a bucket of its own (``bucket_bytes=0``: one
    bucket per tensor). Each tensor is copied into its bucket as it arrives, so the source may
    free it right after (ZeRO-3 gathers). ``transient=True`` is for a consumer that copies each
    bucket away (``ray.put``) before asking for the next: every bucket is packed into the same
    staging buffer, kept for the next call in this thread -- fresh memory costs a page fault per
    4 KiB on first touch, which made packing 5-10x slower than the copy itself -- and a
    contiguous CPU tensor that fills a bucket alone is not copied at all: its bucket is a view.
    ``shared`` packs bucket k straight into the sender's k-th ``/dev/shm`` file instead and
    yields :class:`SharedBucket` s (marked ``share_pages`` when asked).
    """
    staging = _new_staging(0)
    names: list[str] = []
    shapes: list[tuple[int, ...]] = []
    dtype, used, index, path = None, 0, -1, ""

    def bucket() -> Bucket | SharedBucket:
        if shared is not None:
            return SharedBucket(list(names), list(shapes), dtype_name(dtype), path, used,
                                share_pages)
        flat = staging[:used].view(_transport_dtype(dtype)).numpy()
        return Bucket(list(names), list(shapes), dtype_name(dtype), flat)

    for name, tensor in named_tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if names and (tensor.dtype != dtype or used + nbytes > bucket_bytes):
            yield bucket()
            names.clear()
            shapes.clear()
            used = 0
        if (transient and shared is None and nbytes >= bucket_bytes
                and tensor.device.type == "cpu" and tensor.is_contiguous()):
            flat = tensor.detach().reshape(-1).view(_transport_dtype(tensor.dtype)).numpy()
            yield Bucket([name], [tuple(tensor.shape)], dtype_name(tensor.dtype), flat)
            continue
        if not names:
            dtype, capacity = tensor.dtype, max(bucket_bytes, nbytes)
            index += 1
            if shared is not None:
                path, staging = shared.slot(index, capacity)
            elif not transient:
                staging = _new_staging(capacity)
            else:
                if getattr(_STAGING, "buffer", staging).numel() < capacity:
                    _STAGING.buffer = _new_staging(capacity)
                staging = _STAGING.buffer
        target = staging[used:used + nbytes].view(tensor.dtype).view(tensor.shape)
        target.copy_(tensor)  # also gathers a non-contiguous tensor, and GPU -> host
        names.append(name)
        shapes.append(tuple(tensor.shape))
        used += nbytes
    if names:
        yield bucket()


# ------------------------------------------------------------------------------- applying

_LOOKUPS: "weakref.WeakKeyDictionary[torch.nn.Module, dict[str, torch.Tensor]]" = \
    weakref.WeakKeyDictionary()


def _lookup(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """name -> parameter/buffer, built once per model: a sync applies hundreds of tensors.

    Tied weights answer to every name (``remove_duplicate=False``). A model whose parameters are
    *replaced* (``load_state_dict(assign=True)``) needs ``_LOOKUPS.pop(model)``.
    """
    model = unwrap_model(model)
    table = _LOOKUPS.get(model)
    if table is None:
        table = dict(model.named_buffers(remove_duplicate=False))
        table.update(model.named_parameters(remove_duplicate=False))
        _LOOKUPS[model] = table
    return table


def unpack_bucket(bucket: Bucket | SharedBucket | BroadcastBucket
                  ) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) views into the bucket's bytes (no copy; read-only where they sit in
    shared memory): what an engine with its own weight loader (vLLM) takes."""
    if isinstance(bucket, BroadcastBucket):
        if bucket.received is None:
            raise ValueError("weight sync: a broadcast bucket with nothing received into it")
        source = bucket.received
    else:
        source = _as_torch(bucket.array(), bucket.dtype)
    tensors, offset = [], 0
    for name, shape in zip(bucket.names, bucket.shapes):
        n = math.prod(shape)
        tensors.append((name, source[offset:offset + n].view(shape)))
        offset += n
    return tensors


def apply_bucket(model: torch.nn.Module, bucket: Bucket | SharedBucket | BroadcastBucket
                 ) -> int:
    """Copy a bucket's tensors into the model in place (casting dtype); returns how many.

    A :class:`SharedBucket` marked ``share_pages`` is not copied where it need not be: a CPU
    weight of the bucket's dtype is pointed at the bucket's pages (``.data``), so this receiver
    and every other one on the node read the sender's single copy, and the next sync updates
    them where they lie. Every name and shape is checked before anything is written, so a bad
    bucket changes nothing: an unknown name raises KeyError, a wrong shape ValueError.
    """
    table = _lookup(model)
    targets = []
    for name, shape in zip(bucket.names, bucket.shapes):
        if name not in table:
            raise KeyError(f"weight sync: the receiving model has no parameter or buffer named "
                           f"{name!r}")
        if tuple(table[name].shape) != tuple(shape):
            raise ValueError(f"weight sync: {name!r} has shape {tuple(table[name].shape)} in "
                             f"the receiving model but {tuple(shape)} in the bucket")
        targets.append(table[name])
    share = getattr(bucket, "share_pages", False)
    with torch.no_grad():  # the sources are views of shared memory: one copy, into the model
        for target, (_, source) in zip(targets, unpack_bucket(bucket)):
            if share and target.device.type == "cpu" and target.dtype == source.dtype:
                target.data = source  # read-only pages: generation only reads its weights
                target._culture_rl_shared_pages = True
            elif getattr(target, "_culture_rl_shared_pages", False):
                # Its storage is the sender's read-only pages: writing there would fault.
                target.data = source.to(target.dtype).clone()
                target._culture_rl_shared_pages = False
            else:
                target.copy_(source)
    return len(targets)


class WeightReceiver:
    """Mixin for rollout actors: set ``self.model`` (a plain HF model) and the trainer's
    :func:`sync_weights` can call ``receive_bucket`` on the actor.

    The collective transport also calls ``sync_peer``, ``join_sync_group``,
    ``receive_broadcast`` and ``leave_sync_group`` (they run the receiver's side in
    :mod:`culture_rl.distributed.collective_sync`). ``receive_broadcast`` blocks in the
    broadcast until the trainer sends, and bucket k's call must run before bucket k+1's: the
    actor has to run its calls one at a time, in order -- Ray's default (``max_concurrency=1``,
    not an async actor), which every receiver here uses. No extra concurrency is needed, since
    the trainer makes each bucket's call before it broadcasts. A busy receiver (say, one that is
    generating) just starts its part late, and the trainer waits for it, up to the timeout.
    """

    model: torch.nn.Module

    def receive_bucket(self, bucket: Bucket | SharedBucket | BroadcastBucket) -> int:
        return apply_bucket(self.model, bucket)

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def sync_device(self) -> torch.device:
        """Where an NCCL group's broadcasts land: the model's device. Override it for an
        engine whose model has no parameters of its own."""
        return next(unwrap_model(self.model).parameters()).device

    def sync_peer(self, backend: str) -> dict:
        """What the trainer checks before it builds a collective group: this actor's node and
        GPU (NCCL needs a GPU of its own for every rank)."""
        from culture_rl.distributed.collective_sync import sync_peer

        return sync_peer(self, backend)

    def join_sync_group(self, group_id: str, host: str, port: int, rank: int, world_size: int,
                        backend: str, timeout_s: float) -> int:
        """Become ``rank`` of the trainer's group (blocks until every member has joined)."""
        from culture_rl.distributed.collective_sync import join_group

        return join_group(self, group_id, host, port, rank, world_size, backend, timeout_s)

    def receive_broadcast(self, group_id: str, bucket: BroadcastBucket, timeout_s: float) -> int:
        """Receive one bucket's broadcast into this actor's buffer, then apply it as
        ``receive_bucket`` does. A failed broadcast drops the group (the trainer rebuilds it at
        the next sync)."""
        from culture_rl.distributed.collective_sync import receive_broadcast

        return receive_broadcast(self, group_id, bucket, timeout_s)

    def leave_sync_group(self, group_id: str) -> bool:
        from culture_rl.distributed.collective_sync import leave_group

        return leave_group(self, group_id)


# ------------------------------------------------------------------------------- sending


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


def await_acks(acks: list[list], receivers: list, sent_tensors: int, timeout_s: float,
                waited_s: float) -> None:
    """Wait for every receiver's reply to every bucket; a late one is a WeightSyncError, a
    receiver's own error (unknown name, shape mismatch) is re-raised."""
    import ray

    refs = [ref for per_bucket in acks for ref in per_bucket]
    _, not_ready = ray.wait(refs, num_returns=len(refs), timeout=max(timeout_s - waited_s, 0))
    if not_ready:
        late = set(not_ready)
        outstanding = sum(any(ref in late for ref in per_bucket) for per_bucket in acks)
        raise WeightSyncError(f"weight sync timed out after {timeout_s:g} s: {outstanding} of "
                              f"{len(acks)} buckets not yet applied by all {len(receivers)} "
                              f"receivers ({len(not_ready)} of {len(refs)} RPCs outstanding)")
    counts = ray.get(refs)  # re-raises a receiver's error (unknown name, shape mismatch)
    for index in range(len(receivers)):
        applied = sum(counts[index::len(receivers)])
        if applied != sent_tensors:
            raise WeightSyncError(f"receiver {index} applied {applied} tensors but "
                                  f"{sent_tensors} were sent")


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
    the trainer and the receivers (see :mod:`culture_rl.distributed.collective_sync`; built
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
        from culture_rl.distributed.collective_sync import sync_collective, \
            default_collective_backend

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
