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
generators, NCCL or gloo) lives in :mod:`.collective` (its groups and the receiver's side in
:mod:`.groups`); :func:`sync_weights` dispatches to it.

The walk over the trainer's weights (LoRA merge, ZeRO-3 gather, plain HF names) is
:mod:`culture_rl.distributed.weight_export`; this package packs and moves what it yields:
:mod:`.buckets` (packing, applying, acknowledgements), :mod:`.sender` (``sync_weights``),
:mod:`.receiver` (the actors' mixin), :mod:`.collective` and :mod:`.groups`. The names below
are its public interface.

LoRA: the generators hold plain models, so the trainer sends ``W + delta`` for each adapted
weight (computed on the fly; the trainer's model is never modified). Sending the unmerged base
weight -- the generator never sees the adapter -- is the "LoRA weights never reach the generator"
failure we design against; ``tests/integration/test_weight_sync_ray.py`` proves they do.

ZeRO-3: every rank holds only a shard of each weight, so every rank must call
``sync_weights(engine, receivers, ..., gather_zero3=True)`` in lockstep (the gather is a
collective); only rank 0 needs receivers, the others pass ``receivers=[]`` and just take part
in the gathers.
"""

from culture_rl.distributed.weight_export import iter_export_tensors, state_fingerprint
from culture_rl.distributed.weight_sync.buckets import (BroadcastBucket, Bucket, SharedBucket,
                                                        SharedStaging, WeightSyncError,
                                                        apply_bucket, make_buckets,
                                                        unpack_bucket)
from culture_rl.distributed.weight_sync.collective import close_sync_groups
from culture_rl.distributed.weight_sync.receiver import WeightReceiver
from culture_rl.distributed.weight_sync.sender import (TRANSPORTS, close_shared_staging,
                                                       sync_weights)

__all__ = ["BroadcastBucket", "Bucket", "SharedBucket", "SharedStaging", "TRANSPORTS",
           "WeightReceiver", "WeightSyncError", "apply_bucket", "close_shared_staging",
           "close_sync_groups", "iter_export_tensors", "make_buckets", "state_fingerprint",
           "sync_weights", "unpack_bucket"]
