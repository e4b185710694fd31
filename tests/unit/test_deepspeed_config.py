import pytest

from culture_rl.config import DeepSpeedConfig, TrainConfig
from culture_rl.distributed.deepspeed import (build_deepspeed_config, describe_batch,
                                              torch_backend)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_stage_and_batch_numbers(stage):
    train = TrainConfig(micro_batch_size=4, gradient_accumulation_steps=3)
    ds = build_deepspeed_config(DeepSpeedConfig(zero_stage=stage), train, 2, use_gpu=False)
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["train_batch_size"] == 24
    assert ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 3
    assert ds["bf16"]["enabled"] is False
    assert ("stage3_gather_16bit_weights_on_model_save" in ds["zero_optimization"]) == (stage == 3)


def test_offload_and_precision():
    ds = build_deepspeed_config(DeepSpeedConfig(zero_stage=3, offload_optimizer=True,
                                                offload_params=True, precision="bf16"),
                                TrainConfig(), 8, use_gpu=True)
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["pin_memory"] is True
    assert ds["bf16"]["enabled"] is True


def test_backend_and_description():
    assert torch_backend(True) == "nccl" and torch_backend(False) == "gloo"
    text = describe_batch(TrainConfig(micro_batch_size=2, gradient_accumulation_steps=4), 8)
    assert text.startswith("global batch 64 = micro batch 2 x accumulation 4 x 8 workers")
