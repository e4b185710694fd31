"""Every shipped config loads, validates and has a well-formed resource plan."""
from pathlib import Path

import pytest

from culture_rl.config import load_config
from culture_rl.distributed.deepspeed import build_deepspeed_config, global_batch_size
from culture_rl.rl.plan import batch_plan
from culture_rl.rl.ppo import ADVANTAGE_ESTIMATORS, KL_ESTIMATORS
from culture_rl.rl.rewards import REWARD_FUNCTIONS

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_configs_are_shipped():
    names = {p.name for p in CONFIGS}
    assert {"quickstart.yaml", "align_sft_llama31_8b_us.yaml",
            "align_sft_qwen25_7b_zh.yaml", "align_ppo_quickstart.yaml",
            "align_ppo_llama31_8b_us.yaml", "align_ppo_qwen25_7b_zh.yaml"} <= names


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
    ppo = config.ppo
    batch_plan(config).check()
    assert ppo.reward in REWARD_FUNCTIONS and ppo.kl_estimator in KL_ESTIMATORS
    assert ppo.advantage_estimator in ADVANTAGE_ESTIMATORS


def test_paper_configs_follow_align():
    for name in ("align_sft_llama31_8b_us.yaml", "align_sft_qwen25_7b_zh.yaml"):
        config = load_config(Path(CONFIGS[0]).parent / name)
        assert config.lora.r == 64 and config.lora.alpha == 256
        assert sorted(config.lora.target_modules) == ["q_proj", "v_proj"]
        assert config.sft.learning_rate == pytest.approx(1e-5)
        assert config.sft.lr_scheduler == "cosine"
        assert config.deepspeed.zero_stage == 2 and config.deepspeed.precision == "bf16"
        assert config.resources.use_gpu


def test_paper_ppo_configs_follow_align_and_fit_one_8_gpu_node():
    from culture_rl.distributed.cluster import plan_totals
    from culture_rl.rl.plan import ppo_roles

    for name in ("align_ppo_llama31_8b_us.yaml", "align_ppo_qwen25_7b_zh.yaml"):
        config = load_config(Path(CONFIGS[0]).parent / name)
        ppo = config.ppo
        assert ppo.actor_learning_rate == pytest.approx(5e-7)
        assert ppo.critic_learning_rate == pytest.approx(9e-6)
        assert ppo.kl_coef == pytest.approx(0.1) and not ppo.adaptive_kl
        assert ppo.rollout_batch_size == 64 and ppo.samples_per_prompt == 1
        assert ppo.prompt_split == "val" and ppo.ranking_words == 10
        assert ppo.reward == "ranking_spearman" and ppo.advantage_estimator == "gae"
        assert config.eval.split == "test"  # PPO trains on val cues; report on unseen ones
        assert plan_totals(ppo_roles(config))["GPU"] == 8

