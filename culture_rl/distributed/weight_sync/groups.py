"""Process groups of the collective weight sync and the receiver's side of a broadcast.

Each group is its own (trainer rank 0, generators ranks 1..N), built over a TCP store and never
registered as torch.distributed's default group, so a trainer inside a DeepSpeed group can use
it. The sending side is :mod:`culture_rl.distributed.weight_sync.collective`.
"""

from __future__ import annotations

import torch

from culture_rl.distributed.weight_sync.buckets import BroadcastBucket, WeightSyncError


# ------------------------------------------------------------------------------- process groups


def peer_info(device: torch.device | None, backend: str) -> dict:
    """This process' node and, for NCCL, its GPU (by UUID: the same GPU has different indices
    in processes with different ``CUDA_VISIBLE_DEVICES``)."""
    import ray

    gpu = None
    if backend == "nccl":
        if device is None or device.type != "cuda":
            raise WeightSyncError(f"weight sync: an NCCL group needs every member's weights on "
                                  f"a GPU, and this one's are on {device}; use "
                                  f"collective_backend='gloo' or another transport")
        gpu = str(torch.cuda.get_device_properties(device).uuid)
    return {"node": ray.get_runtime_context().get_node_id(), "gpu": gpu}


def shared_gpus(peers: list[dict]) -> list[tuple[int, int]]:
    """Pairs of ranks that sit on the same GPU of the same node: NCCL refuses to build such a
    group ("Duplicate GPU detected"), so the trainer checks first and says so."""
    first: dict[tuple[str, str], int] = {}
    pairs = []
    for rank, peer in enumerate(peers):
        if peer.get("gpu") is None:
            continue
        key = (peer["node"], peer["gpu"])
        if key in first:
            pairs.append((first[key], rank))
        else:
            first[key] = rank
    return pairs


def process_group(store, rank: int, world_size: int, backend: str, timeout_s: float,
                   host: str):
    """A standalone process group over ``store``. torch.distributed's default group and its
    registry are left alone (nothing here calls ``init_process_group``), so this works inside
    a trainer that already belongs to a DeepSpeed group. Blocks until every rank has joined."""
    import datetime

    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.PrefixStore("culture_rl_weight_sync/", store)
    if backend == "gloo":
        options = dist.ProcessGroupGloo._Options()
        options._timeout = timeout
        # This node's address as Ray knows it: the default device resolves the hostname, which
        # on some clusters is an address the other nodes cannot reach.
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=host)]
        return dist.ProcessGroupGloo(store, rank, world_size, options)
    nccl = getattr(dist, "ProcessGroupNCCL", None)
    if nccl is None or not torch.cuda.is_available():
        raise WeightSyncError("weight sync: the NCCL backend needs a CUDA build of torch and "
                              "a GPU")
    options = nccl.Options()
    options._timeout = timeout
    return nccl(store, rank, world_size, options)


class SyncGroup:
    """One member's end of a weight-sync group: the store, the process group and (receivers)
    the byte buffer broadcasts land in, kept from sync to sync."""

    def __init__(self, group_id: str, store, pg, backend: str, timeout_s: float, rank: int):
        self.id, self.store, self.pg = group_id, store, pg
        self.backend, self.timeout_s, self.rank = backend, timeout_s, rank
        self.buffer: torch.Tensor | None = None
        self.receivers: list = []  # the trainer's end: the actors, ranks 1..N

    @classmethod
    def join(cls, group_id: str, host: str, port: int, rank: int, world_size: int,
             backend: str, timeout_s: float, own_host: str) -> "SyncGroup":
        import datetime

        import torch.distributed as dist

        store = dist.TCPStore(host, port, world_size, False,
                              datetime.timedelta(seconds=timeout_s))
        pg = process_group(store, rank, world_size, backend, timeout_s, own_host)
        return cls(group_id, store, pg, backend, timeout_s, rank)

    def broadcast(self, tensor: torch.Tensor):
        """Rank 0's ``tensor`` into every other rank's (asynchronous: returns the Work)."""
        from torch.distributed import BroadcastOptions

        options = BroadcastOptions()
        options.rootRank, options.rootTensor = 0, 0
        return self.pg.broadcast([tensor], options)

    @staticmethod
    def wait(work, timeout_s: float) -> None:
        """Block until ``work`` is done (raises RuntimeError after ``timeout_s``; for NCCL this
        waits on the host too, not just the stream)."""
        import datetime

        work.wait(datetime.timedelta(seconds=max(timeout_s, 1e-3)))

    def receive(self, nbytes: int, device: torch.device, timeout_s: float) -> torch.Tensor:
        """The next broadcast, ``nbytes`` long, in this member's buffer (grown as needed)."""
        if self.buffer is None or self.buffer.numel() < nbytes or self.buffer.device != device:
            self.buffer = None  # free the old one first
            self.buffer = torch.empty(nbytes, dtype=torch.uint8, device=device)
        view = self.buffer[:nbytes]
        self.wait(self.broadcast(view), timeout_s)
        return view

    def close(self) -> None:
        """Leave the group. For gloo, dropping the last reference to the group closes its
        sockets, so the other members' pending broadcasts fail at once instead of at their
        timeout (gloo's ``abort()`` does not do that); NCCL communicators are aborted."""
        pg, self.pg, self.store, self.buffer = self.pg, None, None, None
        if pg is not None and self.backend == "nccl":
            try:
                pg.abort()
            except Exception:  # already broken: nothing more to free
                pass
        del pg


def _receiver_groups(receiver) -> dict[str, SyncGroup]:
    """A receiver actor's groups by id (the mixin has no ``__init__`` to make the dict in)."""
    return receiver.__dict__.setdefault("_culture_rl_sync_groups", {})


# ------------------------------------------------------------------------------- receiving


def sync_peer(receiver, backend: str) -> dict:
    """What the trainer checks before it builds a collective group: ``receiver``'s node and
    GPU (NCCL needs a GPU of its own for every rank)."""
    return peer_info(receiver.sync_device() if backend == "nccl" else None, backend)


def join_group(receiver, group_id: str, host: str, port: int, rank: int, world_size: int,
               backend: str, timeout_s: float) -> int:
    """Make ``receiver`` ``rank`` of the trainer's group (blocks until every member has
    joined); a group of the same id it was already in is closed first."""
    import ray

    groups = _receiver_groups(receiver)
    stale = groups.pop(group_id, None)
    if stale is not None:
        stale.close()
    groups[group_id] = SyncGroup.join(group_id, host, port, rank, world_size, backend,
                                       timeout_s, ray.util.get_node_ip_address())
    return rank


def receive_broadcast(receiver, group_id: str, bucket: BroadcastBucket, timeout_s: float) -> int:
    """Receive one bucket's broadcast into ``receiver``'s buffer (on its ``sync_device()`` for
    NCCL), then apply it with its ``receive_bucket``. A failed broadcast drops the group (the
    trainer rebuilds it at the next sync)."""
    groups = _receiver_groups(receiver)
    group = groups.get(group_id)
    if group is None:
        raise WeightSyncError(f"weight sync: this receiver is not in sync group {group_id} "
                              "(it left it, or dropped it after a failed broadcast)")
    device = receiver.sync_device() if group.backend == "nccl" else torch.device("cpu")
    try:
        buffer = group.receive(bucket.nbytes, device, timeout_s)
    except Exception as error:  # timed out, or the trainer's end went away
        groups.pop(group_id, None)
        group.close()
        raise WeightSyncError(f"weight sync: rank {group.rank} of sync group {group_id} "
                              f"did not receive a bucket of {bucket.nbytes} bytes "
                              f"(timeout {timeout_s:g} s): {error}") from None
    bucket.received = buffer.view(getattr(torch, bucket.dtype))
    return receiver.receive_bucket(bucket)


def leave_group(receiver, group_id: str) -> bool:
    """Close ``receiver``'s end of a group; False if it was not in it."""
    group = _receiver_groups(receiver).pop(group_id, None)
    if group is not None:
        group.close()
    return group is not None
