"""The receiver's side of the weight sync: a mixin for rollout actors."""

from __future__ import annotations

import torch

from culture_rl.distributed.weight_export import unwrap_model
from culture_rl.distributed.weight_sync import groups
from culture_rl.distributed.weight_sync.buckets import (BroadcastBucket, Bucket, SharedBucket,
                                                        apply_bucket)


class WeightReceiver:
    """Mixin for rollout actors: set ``self.model`` (a plain HF model) and the trainer's
    :func:`sync_weights` can call ``receive_bucket`` on the actor.

    The collective transport also calls ``sync_peer``, ``join_sync_group``,
    ``receive_broadcast`` and ``leave_sync_group`` (they run the receiver's side in
    :mod:`culture_rl.distributed.weight_sync.groups`). ``receive_broadcast`` blocks in the
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
        return groups.sync_peer(self, backend)

    def join_sync_group(self, group_id: str, host: str, port: int, rank: int, world_size: int,
                        backend: str, timeout_s: float) -> int:
        """Become ``rank`` of the trainer's group (blocks until every member has joined)."""
        return groups.join_group(self, group_id, host, port, rank, world_size, backend, timeout_s)

    def receive_broadcast(self, group_id: str, bucket: BroadcastBucket, timeout_s: float) -> int:
        """Receive one bucket's broadcast into this actor's buffer, then apply it as
        ``receive_bucket`` does. A failed broadcast drops the group (the trainer rebuilds it at
        the next sync)."""
        return groups.receive_broadcast(self, group_id, bucket, timeout_s)

    def leave_sync_group(self, group_id: str) -> bool:
        return groups.leave_group(self, group_id)
