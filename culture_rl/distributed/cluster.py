"""Joining Ray and checking a resource plan before any work is scheduled.

An impossible plan (more workers or GPUs than the cluster offers) would otherwise sit pending
forever. On an autoscaling cluster (``resources.autoscaling``) the check is skipped: the GPU
nodes the plan waits for are started on demand and are not in ``cluster_resources()`` yet.
"""

from __future__ import annotations

import os

from culture_rl.config import ResourcesConfig
from culture_rl.errors import ResourceError


def connect(address: str | None = None) -> None:
    """``ray.init`` once: the given address, else ``RAY_ADDRESS`` (jobs), else a local Ray."""
    import ray

    if ray.is_initialized():
        return
    target = address or os.environ.get("RAY_ADDRESS") or None
    ray.init(address=target, log_to_driver=True, include_dashboard=None,
             configure_logging=False)


def check_resources(resources: ResourcesConfig) -> None:
    """Fail fast (ResourceError naming the field) when the plan cannot fit the cluster."""
    import ray

    if resources.autoscaling:
        return  # nodes that can start on demand are not in cluster_resources() yet
    total = ray.cluster_resources()
    need_cpu = resources.num_workers * resources.cpus_per_worker
    need_gpu = resources.num_workers if resources.use_gpu else 0
    if need_gpu and total.get("GPU", 0) < need_gpu:
        raise ResourceError(f"resources: {resources.num_workers} GPU workers need "
                            f"{need_gpu} GPUs but the cluster has {total.get('GPU', 0):g} "
                            "(set resources.use_gpu=false to train on CPUs)")
    if total.get("CPU", 0) < need_cpu:
        raise ResourceError(f"resources: {resources.num_workers} workers x "
                            f"{resources.cpus_per_worker:g} CPUs = {need_cpu:g} CPUs but the "
                            f"cluster has {total.get('CPU', 0):g} (lower resources.num_workers "
                            "or resources.cpus_per_worker)")
