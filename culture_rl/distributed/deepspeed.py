"""The one place that turns our config into a DeepSpeed config.

Batch accounting is written out explicitly (micro batch x accumulation x workers = global batch)
rather than left to "auto", because confusing batch and GPU accounting is the most common
complaint about RL/SFT frameworks: the numbers a user sets are the numbers DeepSpeed gets, and
``describe_batch`` prints them at start-up.

The SFT stage hands the config to the Hugging Face Trainer. Our own loops (the PPO policy and
critic trainers, the CALM stage in culture_rl/train/calm.py) talk to :class:`DeepSpeedStrategy`
instead, never to DeepSpeed directly: it owns
process-group set-up, ``initialize``, backward, step, save and load, OpenRLHF-style.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from culture_rl.config import DeepSpeedConfig, TrainConfig


def torch_backend(use_gpu: bool) -> str:
    """NCCL between GPUs; gloo on CPUs (DeepSpeed's CPU accelerator speaks gloo)."""
    return "nccl" if use_gpu else "gloo"


def global_batch_size(train: TrainConfig, world_size: int) -> int:
    return train.micro_batch_size * train.gradient_accumulation_steps * world_size


def describe_batch(train: TrainConfig, world_size: int) -> str:
    return (f"global batch {global_batch_size(train, world_size)} = micro batch "
            f"{train.micro_batch_size} x accumulation {train.gradient_accumulation_steps} x "
            f"{world_size} worker{'s' if world_size != 1 else ''}")


def build_deepspeed_config(ds: DeepSpeedConfig, train: TrainConfig, world_size: int,
                           use_gpu: bool) -> dict[str, Any]:
    """A DeepSpeed JSON config (as a dict) for ZeRO stage 0-3 on CPU or GPU."""
    return deepspeed_config(ds, train.micro_batch_size, train.gradient_accumulation_steps,
                            world_size, use_gpu)


def deepspeed_config(ds: DeepSpeedConfig, micro_batch_size: int, gradient_accumulation_steps: int,
                     world_size: int, use_gpu: bool) -> dict[str, Any]:
    global_batch = micro_batch_size * gradient_accumulation_steps * world_size
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 1:
        zero.update(overlap_comm=use_gpu, contiguous_gradients=True,
                    reduce_bucket_size=5e7, allgather_bucket_size=5e7,
                    # gloo has no native reduce-scatter (torch emulates it); on CPUs an
                    # all-reduce of each bucket is cheaper.
                    reduce_scatter=use_gpu)
    if ds.zero_stage == 3:
        # Gather full weights when saving, so exported models load with from_pretrained.
        zero.update(stage3_gather_16bit_weights_on_model_save=True,
                    stage3_prefetch_bucket_size=5e7, stage3_param_persistence_threshold=1e5)
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": use_gpu}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": use_gpu}
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "train_batch_size": global_batch,
        "gradient_clipping": ds.gradient_clipping,
        "zero_optimization": zero,
        "bf16": {"enabled": ds.precision == "bf16"},
        "fp16": {"enabled": ds.precision == "fp16", "initial_scale_power": 16},
        # The optimizer is torch AdamW built by the HF Trainer (DeepSpeed's fused Adam needs a
        # CUDA build); DeepSpeed wraps it for ZeRO partitioning.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1_000_000_000,  # our own progress lines replace DeepSpeed's
        "wall_clock_breakdown": False,
    }


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


class DeepSpeedStrategy:
    """DeepSpeed for one rank of a trainer group (policy or critic) in our own training loops.

    The controller states batch sizes in samples; this object maps them onto DeepSpeed's
    micro batch x accumulation x ranks and keeps every DeepSpeed call in one place.
    """

    def __init__(self, ds: DeepSpeedConfig, *, micro_batch_size: int,
                 gradient_accumulation_steps: int, world_size: int, use_gpu: bool):
        self.ds, self.use_gpu, self.world_size = ds, use_gpu, world_size
        self.micro_batch_size = micro_batch_size
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.rank = 0

    # -------------------------------------------------------------- process group
    def setup_distributed(self, rank: int, master_addr: str, master_port: int,
                          timeout_s: float = 600) -> None:
        """Join the group's torch.distributed process group (gloo on CPU, NCCL on GPU); the
        timeout turns a peer that never arrives into an error instead of a hang."""
        import deepspeed

        self.rank = rank
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                          LOCAL_RANK="0", WORLD_SIZE=str(self.world_size),
                          LOCAL_WORLD_SIZE="1")
        deepspeed.init_distributed(dist_backend=torch_backend(self.use_gpu),
                                   timeout=timedelta(seconds=timeout_s), verbose=False)

    def attach_distributed(self, rank: int) -> None:
        """Use the process group someone else started (Ray Train's TorchTrainer): DeepSpeed
        wraps the existing torch.distributed group instead of creating one."""
        import deepspeed

        self.rank = rank
        deepspeed.init_distributed(dist_backend=torch_backend(self.use_gpu), verbose=False)

    @property
    def is_rank_0(self) -> bool:
        return self.rank == 0

    def config(self) -> dict[str, Any]:
        return deepspeed_config(self.ds, self.micro_batch_size, self.gradient_accumulation_steps,
                                self.world_size, self.use_gpu)

    # -------------------------------------------------------------- engines
    def prepare(self, model, learning_rate: float, weight_decay: float = 0.0,
                param_groups: list[dict] | None = None, lr_scheduler=None):
        """Wrap a model for training: torch AdamW over the trainable parameters (DeepSpeed's
        fused Adam needs a CUDA build), partitioned by ZeRO. ``param_groups`` (torch optimizer
        groups, e.g. their own learning rate for freshly initialised heads) replace the single
        group; ``lr_scheduler`` is a callable ``optimizer -> scheduler`` that DeepSpeed steps
        with the optimizer and saves in its checkpoints."""
        import deepspeed
        import torch

        if param_groups is None:
            param_groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
        optimizer = torch.optim.AdamW(param_groups, lr=learning_rate, weight_decay=weight_decay)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer,
                                          lr_scheduler=lr_scheduler, config=self.config())
        return engine

    def gathered(self, params):
        """A context in which ZeRO-3-partitioned ``params`` are whole on every rank (a
        collective: every rank enters it); nothing to do below stage 3."""
        import contextlib

        if self.ds.zero_stage != 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)

    def prepare_frozen(self, model):
        """A model that only runs forward passes (the full-weight reference): partitioned by a
        ZeRO-3 inference engine when training uses ZeRO-3, else kept as is."""
        model.eval().requires_grad_(False)
        if self.ds.zero_stage != 3:
            return model
        import deepspeed

        config = self.config()
        config.pop("gradient_clipping", None)
        engine, *_ = deepspeed.initialize(model=model, config=config)
        return engine

    def backward(self, engine, loss) -> None:
        engine.backward(loss)  # scales by 1/accumulation and reduces gradients across ranks

    def step(self, engine) -> None:
        engine.step()  # an optimizer step only at the accumulation boundary

    # -------------------------------------------------------------- checkpoints
    def save(self, engine, folder: str | Path, client_state: dict | None = None,
             frozen_base: bool = False) -> None:
        """Every rank writes its shard (model, optimizer) into ``folder``. ``frozen_base``
        (LoRA) leaves the frozen base weights out: they are in the model the run started from."""
        engine.save_checkpoint(str(folder), tag="state", client_state=client_state or {},
                               exclude_frozen_parameters=frozen_base)

    def load(self, engine, folder: str | Path, frozen_base: bool = False) -> dict:
        _, client_state = engine.load_checkpoint(str(folder), tag="state",
                                                 load_module_strict=not frozen_base)
        if client_state is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint in {folder}")
        return client_state

    def barrier(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()

    def all_reduce_mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average scalar metrics over the group's ranks."""
        import torch
        import torch.distributed as dist

        if not dist.is_initialized() or self.world_size == 1 or not values:
            return values
        keys = sorted(values)
        tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(tensor)
        return {k: float(v) / self.world_size for k, v in zip(keys, tensor.tolist())}
