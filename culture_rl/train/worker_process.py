"""What a Ray Train worker fixes in its own process before training (print and Ray Train's
report logging), and the one line a failed run's error comes down to. Shared by the SFT and
CALM worker loops."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any


def restore_builtin_print() -> None:
    """Ray Train V2 routes print() in workers through logging. dill (which datasets uses to
    fingerprint map functions) reads a function's globals by capturing stdout around dis.dis();
    with the patched print, whole bytecode listings leaked into the run's logs instead."""
    import builtins

    try:
        from ray.train.v2._internal.logging import patch_print
    except ImportError:
        return
    builtins.print = getattr(patch_print, "_original_print", builtins.print)


def quiet_ray_train_reports() -> None:
    """Ray Train logs every report with all its metrics at INFO (twice per epoch per rank);
    our progress lines already say it. Its logger is named after the module's file path."""
    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:
        return
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


@dataclass(frozen=True)
class WorkerStart:
    """What every worker loop reads first: its job, whether it trains on a GPU, its rank."""
    job: Any
    use_gpu: bool
    rank: int
    world_size: int
    local_rank: int  # on its node


def start_worker(loop_config: dict) -> WorkerStart:
    """The first steps of a Ray Train worker loop (SFT and CALM): print and report logging
    fixed, the torch threads the resource plan gave this worker, and its place in the group."""
    restore_builtin_print()  # before Ray Train's own modules are imported below
    import ray.train
    import torch

    quiet_ray_train_reports()
    torch.set_num_threads(loop_config["threads"])
    context = ray.train.get_context()
    return WorkerStart(loop_config["job"], loop_config["use_gpu"], context.get_world_rank(),
                       context.get_world_size(), context.get_local_rank())


def root_cause(err: BaseException) -> str:
    text = str(err).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # Ray's error text ends with the worker's exception line ("RuntimeError: ...").
    for line in reversed(lines):
        if "Error" in line.split(":")[0] or "Exception" in line.split(":")[0]:
            return line
    return lines[-1] if lines else type(err).__name__
