"""The collective transport of the weight sync (``sync_weights(..., transport="collective")``).

The GPU clusters' path (as OpenRLHF and verl do it): a process group of its own -- trainer
rank 0, generators ranks 1..N, made once per set of generators and cached -- over which each
bucket is broadcast, device to device over NCCL when the trainer's weights are on a GPU,
through host memory over gloo otherwise (the same code; that is how the tests run it on CPUs);
the RPC per bucket carries only names, shapes and dtype. The group never touches
torch.distributed's default group, so a trainer inside a DeepSpeed group can use it.

Buckets and apply are in :mod:`~culture_rl.distributed.weight_sync.buckets`, the other
transports in :mod:`~culture_rl.distributed.weight_sync.sender`, whose ``sync_weights``
dispatches here; the groups and the receiver's side (which the ``WeightReceiver`` mixin's
collective methods call) are in :mod:`~culture_rl.distributed.weight_sync.groups`.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Iterable, Iterator

import torch

from culture_rl.distributed.weight_export import unwrap_model
from culture_rl.distributed.weight_sync.buckets import (BroadcastBucket, BucketContents,
                                                        WeightSyncError, await_acks, tensor_bytes)
from culture_rl.distributed.weight_sync.groups import SyncGroup, peer_info, process_group, \
    shared_gpus


class _BroadcastStaging:
    """The trainer's two byte buffers for a collective sync, on the broadcast's device, used in
    turn: bucket k+1 is packed while bucket k is still being broadcast, and a buffer is only
    packed again once its last broadcast is done (``wait``)."""

    def __init__(self, device: torch.device, wait):
        self.device, self.wait = device, wait  # wait(work, bucket index)
        self.buffers: list[torch.Tensor | None] = [None, None]
        self.works: list = [None, None]  # (work, bucket index) per buffer
        self.slot = 1

    def take(self, capacity: int) -> torch.Tensor:
        self.slot = 1 - self.slot
        pending, self.works[self.slot] = self.works[self.slot], None
        if pending is not None:
            self.wait(*pending)
        buffer = self.buffers[self.slot]
        if buffer is None or buffer.numel() < capacity:
            self.buffers[self.slot] = None
            buffer = self.buffers[self.slot] = torch.empty(capacity, dtype=torch.uint8,
                                                           device=self.device)
        return buffer

    def sent(self, work, index: int) -> None:
        """The broadcast of the buffer last taken, bucket ``index``."""
        self.works[self.slot] = (work, index)

    def drain(self) -> None:
        for slot, pending in enumerate(self.works):
            self.works[slot] = None
            if pending is not None:
                self.wait(*pending)


def pack_broadcast_buckets(named_tensors: Iterable[tuple[str, torch.Tensor]],
                           bucket_bytes: int, staging: _BroadcastStaging
                           ) -> Iterator[tuple[BroadcastBucket, torch.Tensor]]:
    """:func:`make_buckets`' grouping (consecutive tensors of one dtype, at most
    ``bucket_bytes`` a bucket, a bigger tensor alone) packed into ``staging``'s byte buffers
    on their device, each tensor in its own dtype (bf16 stays bf16: the broadcast moves bytes).
    Yields each bucket's metadata and its packed bytes; the bytes are valid until the next
    bucket but one is packed, unless the caller reports a broadcast with ``staging.sent``, which
    is then waited for first."""
    contents = BucketContents()
    buffer = torch.empty(0, dtype=torch.uint8)

    def bucket() -> tuple[BroadcastBucket, torch.Tensor]:
        meta = BroadcastBucket(*contents.close())
        return meta, buffer[:meta.nbytes]

    for name, tensor in named_tensors:
        nbytes = tensor_bytes(tensor)
        if contents.full_for(tensor, nbytes, bucket_bytes):
            yield bucket()
        if not contents.names:
            buffer = staging.take(max(bucket_bytes, nbytes))
        target = buffer[contents.used:contents.used + nbytes].view(tensor.dtype)
        target.view(tensor.shape).copy_(tensor)  # gathers a non-contiguous tensor; to host for gloo
        contents.add(name, tensor, nbytes)
    if contents.names:
        yield bucket()


# ------------------------------------------------------------------------------- sending


_GROUPS: dict[tuple[str, ...], SyncGroup] = {}  # receiver actor ids -> this end of their group


def _export_device(model: torch.nn.Module) -> torch.device:
    parameter = next(unwrap_model(model).parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def default_collective_backend(model: torch.nn.Module) -> str:
    """The collective transport's backend for ``model``'s weights: NCCL when they are on a
    GPU (device to device), gloo otherwise (through host memory)."""
    return "nccl" if _export_device(model).type == "cuda" else "gloo"


def _drop_group(key: tuple[str, ...], background: bool = False) -> None:
    """Close this end of a group (its peers' pending broadcasts then fail) and tell the
    receivers to leave it (not awaited: a receiver runs it before any later call).
    ``background``: close it in a thread of its own -- a gloo group's destructor waits for its
    queued broadcasts, each up to the group's timeout, and a failed sync should not."""
    group = _GROUPS.pop(key, None)
    if group is None:
        return
    if background:
        threading.Thread(target=group.close, name="culture-rl-sync-group-close",
                         daemon=True).start()
    else:
        group.close()
    for receiver in group.receivers:
        try:
            receiver.leave_sync_group.remote(group.id)
        except Exception:  # a dead actor: nothing to leave
            pass


def _sender_group(receivers: list, backend: str, timeout_s: float,
                  device: torch.device) -> SyncGroup:
    """The cached group of trainer + ``receivers`` (in this order: ranks 1..N), built on first
    use: one TCPStore on a free port at this node's address, and the remote joins started
    before this end's, whose constructor blocks until every rank has joined. A group is rebuilt
    for another backend or timeout (its operations time out at the ``timeout_s`` it was built
    with), and a new group replaces every cached one that shares a receiver with it."""
    import datetime

    import ray
    import torch.distributed as dist

    key = tuple(receiver._actor_id.hex() for receiver in receivers)
    group = _GROUPS.get(key)
    if group is not None and (group.backend, group.timeout_s) == (backend, timeout_s):
        return group
    for other in [k for k in _GROUPS if set(k) & set(key)]:
        _drop_group(other)
    if backend == "nccl":
        own = peer_info(device, backend)  # the trainer's GPU, rank 0
        try:
            peers = ray.get([r.sync_peer.remote(backend) for r in receivers], timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise WeightSyncError(f"weight sync: {len(receivers)} receivers did not answer "
                                  f"within {timeout_s:g} s") from None
        pairs = shared_gpus([own, *peers])
        if pairs:
            raise WeightSyncError(f"weight sync: ranks {pairs} of the NCCL group (0: the "
                                  "trainer) are on the same GPU, which NCCL refuses; give "
                                  "every member a GPU of its own, or use "
                                  "collective_backend='gloo' or another transport")
    host = ray.util.get_node_ip_address()
    world = len(receivers) + 1
    store = dist.TCPStore(host, 0, world, True, datetime.timedelta(seconds=timeout_s),
                          wait_for_workers=False)  # port 0: the OS picks a free one
    group_id = uuid.uuid4().hex
    joins = [receiver.join_sync_group.remote(group_id, host, store.port, rank, world, backend,
                                             timeout_s)
             for rank, receiver in enumerate(receivers, start=1)]
    try:
        pg = process_group(store, 0, world, backend, timeout_s, host)
        ray.get(joins, timeout=timeout_s)
    except Exception as error:
        done, _ = ray.wait(joins, num_returns=len(joins), timeout=0)
        problems = []
        for ref in done:
            try:
                ray.get(ref)
            except Exception as remote:
                problems.append(str(remote).strip().splitlines()[-1])
        for receiver in receivers:
            receiver.leave_sync_group.remote(group_id)
        raise WeightSyncError(f"weight sync: the {backend} group of the trainer and "
                              f"{len(receivers)} receivers was not set up within "
                              f"{timeout_s:g} s: {error}"
                              + (f"; receivers said: {problems}" if problems else "")) from None
    group = _GROUPS[key] = SyncGroup(group_id, store, pg, backend, timeout_s, rank=0)
    group.receivers = list(receivers)
    return group


def close_sync_groups(timeout_s: float = 10) -> None:
    """Close every collective group this process built (its receivers leave theirs too, waited
    for up to ``timeout_s``; dead receivers are skipped). Safe to call more than once."""
    import ray

    groups = [_GROUPS.pop(key) for key in list(_GROUPS)]
    refs = []
    for group in groups:
        group.close()  # first: a receiver stuck in a broadcast is freed by it
        for receiver in group.receivers:
            try:
                refs.append(receiver.leave_sync_group.remote(group.id))
            except Exception:
                pass
    if refs:
        ray.wait(refs, num_returns=len(refs), timeout=timeout_s)


def sync_collective(model: torch.nn.Module, tensors: Iterator[tuple[str, torch.Tensor]],
                     receivers: list, bucket_bytes: int, timeout_s: float, backend: str,
                     start: float) -> dict:
    """Per bucket: one small RPC per receiver (names, shapes, dtype; the receivers then wait in
    the broadcast), then the broadcast of the packed bytes, while the next bucket is packed."""
    key = tuple(receiver._actor_id.hex() for receiver in receivers)
    device = _export_device(model) if backend == "nccl" else torch.device("cpu")
    group = _sender_group(receivers, backend, timeout_s, device)
    deadline = start + timeout_s

    def wait(work, index: int) -> None:
        try:
            group.wait(work, deadline - time.perf_counter())
        except RuntimeError as error:
            late = "timed out" in str(error).lower() or time.perf_counter() >= deadline
            what = f"timed out after {timeout_s:g} s" if late else "failed"
            raise WeightSyncError(f"weight sync {what}: the broadcast of bucket {index} to the "
                                  f"{len(receivers)} receivers of the {backend} group did not "
                                  f"complete: {error}") from None

    staging = _BroadcastStaging(device, wait)
    acks: list[list] = []
    sent_bytes = sent_tensors = 0
    try:
        for index, (bucket, flat) in enumerate(pack_broadcast_buckets(tensors, bucket_bytes,
                                                                      staging)):
            # The calls first, so every receiver waits in the broadcast that follows.
            acks.append([receiver.receive_broadcast.remote(group.id, bucket, timeout_s)
                         for receiver in receivers])
            try:
                staging.sent(group.broadcast(flat), index)
            except RuntimeError as error:
                raise WeightSyncError(f"weight sync failed: the broadcast of bucket {index} "
                                      f"could not start: {error}") from None
            sent_bytes += bucket.nbytes
            sent_tensors += len(bucket.names)
        staging.drain()
        await_acks(acks, receivers, sent_tensors, timeout_s, time.perf_counter() - start)
    except BaseException:
        # Whatever went wrong (a timeout, a receiver's error, an export that failed half-way),
        # the group may be mid-broadcast: drop it, so the receivers' pending broadcasts fail at
        # once; the next sync builds a new one.
        _drop_group(key, background=True)
        raise
    return {"seconds": time.perf_counter() - start, "bytes": sent_bytes, "buckets": len(acks),
            "tensors": sent_tensors, "rpcs": len(acks) * len(receivers),
            "transport": "collective"}
