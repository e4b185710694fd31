"""Every shipped config loads, validates and has a well-formed resource plan."""
from pathlib import Path

import pytest

from culture_rl.config import load_config
from culture_rl.distributed.deepspeed import build_deepspeed_config, global_batch_size

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_configs_are_shipped():
    names = {p.name for p in CONFIGS}
    assert {"quickstart.yaml", "align_sft_llama31_8b_us.yaml",
            "align_sft_qwen25_7b_zh.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates_with_sane_plan(path):
    config = load_config(path)
    resources = config.resources
    assert resources.num_workers >= 1 and resources.cpus_per_worker > 0
    for train in (config.sft, config.pretrain):
        ds = build_deepspeed_config(config.deepspeed, train, resources.num_workers,
                                    resources.use_gpu)
        assert ds["train_batch_size"] == global_batch_size(train, resources.num_workers)
        assert ds["train_batch_size"] == (ds["train_micro_batch_size_per_gpu"]
                                          * ds["gradient_accumulation_steps"]
                                          * resources.num_workers)
    if config.deepspeed.precision == "bf16":
        assert resources.use_gpu, "bf16 training is for GPUs"


def test_paper_configs_follow_align():
    for name in ("align_sft_llama31_8b_us.yaml", "align_sft_qwen25_7b_zh.yaml"):
        config = load_config(Path(CONFIGS[0]).parent / name)
        assert config.lora.r == 64 and config.lora.alpha == 256
        assert sorted(config.lora.target_modules) == ["q_proj", "v_proj"]
        assert config.sft.learning_rate == pytest.approx(1e-5)
        assert config.sft.lr_scheduler == "cosine"
        assert config.deepspeed.zero_stage == 2 and config.deepspeed.precision == "bf16"
        assert config.resources.use_gpu
