"""Where the GPU-aware benchmarks put things when a GPU is there (nothing runs on one here:
these are the plans' arithmetic), and that a CPU run asks for no GPU at all."""

from __future__ import annotations

from ray_jobs.benchmarks.ppo_step import gpu_overrides
from ray_jobs.benchmarks.weight_sync import gpu_plan


def test_weight_sync_shares_one_gpu_and_packs_receivers_beside_the_senders():
    assert gpu_plan(1, 5) == {"sender_gpu": 0, "ray_gpus": 1, "per_receiver": 0.2}
    # 3 GPUs: the sender has the last one, 5 receivers pack 3 + 2 into the other two
    assert gpu_plan(3, 5) == {"sender_gpu": 2, "ray_gpus": 2, "per_receiver": 0.3333}
    assert 3 * gpu_plan(3, 5)["per_receiver"] <= 1  # the fractions really fit
    assert gpu_plan(6, 5) == {"sender_gpu": 5, "ray_gpus": 5, "per_receiver": 1.0}
    assert gpu_plan(8, 5)["per_receiver"] == 1.0


def test_ppo_step_gpu_overrides():
    assert gpu_overrides(0, 2) == []  # CPU: the quickstart's resources, unchanged
    one = gpu_overrides(1, 2)
    assert one[:2] == ["model.dtype=bfloat16", "deepspeed.precision=bf16"]
    assert one[2:] == ["ppo_resources.gpus_per_trainer=0.5", "ppo_resources.gpus_per_rollout=0.25"]
    assert gpu_overrides(2, 2)[2:] == ["ppo_resources.gpus_per_trainer=1",
                                       "ppo_resources.gpus_per_rollout=0.5"]
    assert gpu_overrides(2, 3)[3] == "ppo_resources.gpus_per_rollout=0.3333"
    assert gpu_overrides(3, 2)[2:] == ["ppo_resources.gpus_per_trainer=1",
                                       "ppo_resources.gpus_per_rollout=1"]


def test_ppo_step_gpu_overrides_load_as_a_config():
    from culture_rl.config import load_config
    from ray_jobs.benchmarks.ppo_step import QUICKSTART

    config = load_config(QUICKSTART, gpu_overrides(1, 2))
    assert config.model.dtype == "bfloat16" and config.deepspeed.precision == "bf16"
    assert config.ppo_resources.gpus_per_trainer == 0.5
    assert config.ppo_resources.gpus_per_rollout == 0.25


def test_two_controllers_side_by_side_fit_the_gpus_they_share():
    """ours and ours_overlap each get half of what one controller would."""
    from culture_rl.config import load_config
    from ray_jobs.benchmarks.ppo_step import QUICKSTART

    for gpus, workers in ((1, 2), (2, 2), (3, 2), (2, 3)):
        alone = load_config(QUICKSTART, gpu_overrides(gpus, workers)).ppo_resources
        paired = load_config(QUICKSTART, gpu_overrides(gpus, workers, controllers=2)
                             ).ppo_resources
        assert paired.gpus_per_trainer <= alone.gpus_per_trainer / 2
        assert paired.gpus_per_rollout <= alone.gpus_per_rollout / 2
        demand = 2 * (paired.gpus_per_trainer + workers * paired.gpus_per_rollout)
        assert demand <= gpus
