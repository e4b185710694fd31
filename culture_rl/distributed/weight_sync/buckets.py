"""Weight-sync buckets: consecutive same-dtype tensors packed into one flat array (in process
memory, a ``/dev/shm`` file, or described for a broadcast), and applying one to a model; plus
:func:`await_acks`, which every transport uses to wait for the receivers' replies."""

from __future__ import annotations

import math
import os
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch

from culture_rl.distributed.weight_export import unwrap_model
from culture_rl.core.errors import CultureRLError


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


class BucketContents:
    """What the bucket being packed holds so far, and the one grouping rule every packer
    shares (:func:`make_buckets`, the broadcast's ``pack_broadcast_buckets``): consecutive
    tensors of one dtype, at most ``bucket_bytes`` a bucket, a bigger tensor alone."""

    def __init__(self):
        self.names: list[str] = []
        self.shapes: list[tuple[int, ...]] = []
        self.dtype: torch.dtype | None = None
        self.used = 0  # bytes

    def full_for(self, tensor: torch.Tensor, nbytes: int, bucket_bytes: int) -> bool:
        """Whether ``tensor`` must start the next bucket (this one holds something)."""
        return bool(self.names) and (tensor.dtype != self.dtype
                                     or self.used + nbytes > bucket_bytes)

    def add(self, name: str, tensor: torch.Tensor, nbytes: int) -> None:
        self.dtype = tensor.dtype
        self.names.append(name)
        self.shapes.append(tuple(tensor.shape))
        self.used += nbytes

    def close(self) -> tuple[list[str], list[tuple[int, ...]], str, int]:
        """The finished bucket's names, shapes, dtype name and bytes; empty again after."""
        closed = self.names, self.shapes, dtype_name(self.dtype), self.used
        self.names, self.shapes, self.used = [], [], 0
        return closed


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


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
    contents = BucketContents()
    index, path = -1, ""

    def bucket() -> Bucket | SharedBucket:
        dtype = contents.dtype
        names, shapes, dtype_text, used = contents.close()
        if shared is not None:
            return SharedBucket(names, shapes, dtype_text, path, used, share_pages)
        flat = staging[:used].view(_transport_dtype(dtype)).numpy()
        return Bucket(names, shapes, dtype_text, flat)

    for name, tensor in named_tensors:
        nbytes = tensor_bytes(tensor)
        if contents.full_for(tensor, nbytes, bucket_bytes):
            yield bucket()
        if (transient and shared is None and nbytes >= bucket_bytes
                and tensor.device.type == "cpu" and tensor.is_contiguous()):
            flat = tensor.detach().reshape(-1).view(_transport_dtype(tensor.dtype)).numpy()
            yield Bucket([name], [tuple(tensor.shape)], dtype_name(tensor.dtype), flat)
            continue
        if not contents.names:
            capacity = max(bucket_bytes, nbytes)
            index += 1
            if shared is not None:
                path, staging = shared.slot(index, capacity)
            elif not transient:
                staging = _new_staging(capacity)
            else:
                if getattr(_STAGING, "buffer", staging).numel() < capacity:
                    _STAGING.buffer = _new_staging(capacity)
                staging = _STAGING.buffer
        target = staging[contents.used:contents.used + nbytes].view(tensor.dtype)
        target.view(tensor.shape).copy_(tensor)  # also gathers a non-contiguous tensor, GPU -> host
        contents.add(name, tensor, nbytes)
    if contents.names:
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
