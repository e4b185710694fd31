"""The one place that turns our config into a DeepSpeed config.

Batch accounting is written out explicitly (micro batch x accumulation x workers = global batch)
rather than left to "auto", because confusing batch and GPU accounting is the most common
complaint about RL/SFT frameworks: the numbers a user sets are the numbers DeepSpeed gets, and
``describe_batch`` prints them at start-up. The PPO issue grows this module into the strategy
object that owns initialize/backward/step/save/load for our own loops.
"""

from __future__ import annotations

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
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "train_batch_size": global_batch_size(train, world_size),
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
