"""Run logs carry no deprecation warnings that only our dependencies' internals can fix, and no
deprecation of our own making; other warnings still show."""

from __future__ import annotations

import warnings

import pytest


def shown(message: str, category=FutureWarning) -> bool:
    from culture_rl.core.library_warnings import silence_library_deprecations

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_library_deprecations()
        warnings.warn(message, category)
    return bool(caught)


def test_the_library_internal_deprecations_are_silenced():
    assert not shown("`torch.distributed.all_gather_into_tensor` is deprecated. Please use "
                     "`torch.distributed.all_gather_single` instead.")
    assert not shown("`is_gradient_checkpointing` is deprecated and will be removed in v6. "
                     "Use `is_activation_checkpointing` instead.")


@pytest.mark.parametrize("message, category", [
    ("`torch.distributed.all_gather_into_tensor` is deprecated", UserWarning),  # other category
    ("some other thing: `is_gradient_checkpointing` is deprecated", FutureWarning),  # not at start
    ("`gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning),
])
def test_every_other_warning_still_shows(message, category):
    assert shown(message, category)


@pytest.mark.parametrize("enabled", [True, False])  # False must beat TRL's default of True
def test_sft_arguments_use_the_checkpointing_name_this_transformers_has_without_warning(
        tmp_path, enabled):
    from culture_rl.config import DeepSpeedConfig, TrainConfig
    from culture_rl.train.sft import TrainJob, sft_args

    job = TrainJob(stage="sft", stage_dir=str(tmp_path), model_path="unused",
                   train=TrainConfig(gradient_checkpointing=enabled, eval_each_epoch=False),
                   deepspeed=DeepSpeedConfig(zero_stage=0), lora=None, train_rows=[])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = sft_args(job, 1, False, str(tmp_path / "scratch"), use_deepspeed=False)
    assert args.gradient_checkpointing is enabled  # read by TRL, peft and the Trainer
    assert not [w for w in caught if "checkpointing" in str(w.message)]
