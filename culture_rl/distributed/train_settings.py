"""The Ray Train controller's settings for one ``fit``: its timeouts from the config, and the
preemption watcher off on a single node.

Ray Train V2 reads these from environment variables when ``fit`` starts its controller (the
driver's values are passed on to it), so they are set around ``fit`` and restored after it. A
variable the user set wins over the config.
"""

from __future__ import annotations

import contextlib
import os

from culture_rl.config import ResourcesConfig
from culture_rl.distributed.deepspeed import torch_backend

PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
WORKER_START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
HEALTH_CHECK_TIMEOUT_ENV = "RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S"


def worker_group(resources: ResourcesConfig) -> dict:
    """The ``TorchTrainer`` arguments every training stage (SFT, CALM) shares: the worker
    group the resource plan asks for, and its collective backend (gloo on CPU, NCCL on GPU)
    with the config's timeout."""
    import ray.train
    from ray.train.torch import TorchConfig

    return {"scaling_config": ray.train.ScalingConfig(
                num_workers=resources.num_workers, use_gpu=resources.use_gpu,
                resources_per_worker={"CPU": resources.cpus_per_worker}),
            "torch_config": TorchConfig(backend=torch_backend(resources.use_gpu),
                                        timeout_s=int(resources.collective_timeout_s))}


def train_controller_env(resources: ResourcesConfig, single_node: bool) -> dict[str, str]:
    """The variables this run sets (those the user has not set already).

    - The worker-group start timeout (Ray's default 60 s): the workers import torch,
      transformers and DeepSpeed before they answer, about 10 s on 2 idle cores and several
      times that on busy ones; at the timeout Ray tears the group down and retries.
      ``resources.worker_start_timeout_s`` (600 s).
    - The worker health-check timeout (Ray's default 600 s): how long one poll of a worker may
      hang before Ray marks it dead. ``resources.health_check_timeout_s`` (600 s).
    - The preemption watcher: an actor that polls Ray for nodes being drained (spot reclaims by
      an autoscaler). On a single node without autoscaling there is nothing to drain, and its
      process start (~2 s of CPU) lands while the workers import torch: on 2 cores it delayed
      the first step. Off there; multi-node and autoscaling clusters keep it.
    """
    wanted = {WORKER_START_TIMEOUT_ENV: f"{resources.worker_start_timeout_s:g}",
              HEALTH_CHECK_TIMEOUT_ENV: f"{resources.health_check_timeout_s:g}"}
    if single_node and not resources.autoscaling:
        wanted[PREEMPTION_WATCHER_ENV] = "0"
    return {name: value for name, value in wanted.items() if name not in os.environ}


@contextlib.contextmanager
def ray_train_settings(resources: ResourcesConfig):
    """Set :func:`train_controller_env` around one ``fit`` (Ray must be connected)."""
    import ray

    single_node = len([n for n in ray.nodes() if n.get("Alive")]) == 1
    added = train_controller_env(resources, single_node)
    os.environ.update(added)
    try:
        yield added
    finally:
        for name in added:
            os.environ.pop(name, None)
