"""The ``sweep:`` config section: Ray Tune over cultures x SFT hyper-parameters
(culture_rl/tune).

``ExperimentConfig.sweep`` (culture_rl/config/__init__.py).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, ValidationInfo, field_validator

from culture_rl.config.base import ConfigSection, CultureKey

class SweepConfig(ConfigSection):
    """``culture-rl sweep``: Ray Tune over cultures x SFT hyper-parameters (culture_rl/tune)."""

    name: str = Field("sweep", min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$",
                      description="Sweep folder: <run dir>/sweeps/<name>/. Rerunning the same "
                                  "name resumes the sweep (Tune restore + per-trial SFT "
                                  "checkpoints).")
    cultures: list[CultureKey] = Field([], description="Cultures to sweep (grid over them), "
                                       "names or indices of the synthetic world. Empty: every "
                                       "culture of the world (with your own data.swow_path: "
                                       "that one culture).")
    search: Literal["grid", "random"] = Field("grid", description="'grid': every combination "
                                              "of the lists below; 'random': num_samples "
                                              "points per culture sampled from them.")
    learning_rate: list[PositiveFloat] = Field([], description="grid: SFT learning rates to "
                                               "try; random: [low, high], sampled "
                                               "log-uniformly. Empty: sft.learning_rate.")
    lora_r: list[PositiveInt] = Field([], description="LoRA ranks (random: choices). Empty: "
                                      "lora.r.")
    lora_alpha: list[PositiveInt] = Field([], description="LoRA alphas (random: choices). "
                                          "Empty: lora.alpha.")
    epochs: list[PositiveInt] = Field([], description="SFT epochs (random: choices). Empty: "
                                      "sft.epochs.")
    num_samples: int = Field(1, ge=1, description="random: points sampled per culture "
                             "(grid: must stay 1).")
    metric: Literal["eval_p@5", "eval_loss"] = Field(
        "eval_p@5", description="Per-epoch metric the sweep optimises and ASHA compares: "
        "held-out P@5 or validation loss.")
    mode: Literal["max", "min"] = Field("max", validate_default=True,
                                        description="Maximise or minimise the metric.")
    scheduler: Literal["asha", "none"] = Field("asha", description="'asha': stop trials "
                                               "early whose metric trails the others at a "
                                               "rung; 'none': run every trial to the end.")
    grace_period: int = Field(1, ge=1, description="ASHA: epochs before a trial can be stopped.")
    reduction_factor: float = Field(2, gt=1, description="ASHA: keep the top 1/reduction_factor "
                                    "of trials at each rung.")
    max_t: int = Field(0, ge=0, description="ASHA: most epochs a trial runs (0: the largest "
                       "epochs value).")
    max_concurrent_trials: int = Field(0, ge=0, description="Trials running at once. 0: as "
                                       "many as fit the cluster (resources per trial = "
                                       "resources.num_workers x cpus_per_worker (+GPUs) + "
                                       "trial_driver_cpus); required with "
                                       "resources.autoscaling.")
    trial_driver_cpus: float = Field(0.25, gt=0, description="CPUs reserved for each trial's "
                                     "driver (the Tune function that starts and watches the "
                                     "trial's Ray Train run; it mostly waits).")

    @field_validator("learning_rate", "lora_r", "lora_alpha", "epochs")
    @classmethod
    def _each_value_once(cls, value: list) -> list:
        if len(set(value)) != len(value):
            raise ValueError("lists a value twice (each trial must be a different point)")
        return value

    @field_validator("learning_rate")
    @classmethod
    def _random_needs_a_range(cls, value: list[float], info: ValidationInfo) -> list[float]:
        if info.data.get("search") == "random" and value and (
                len(value) != 2 or value[0] >= value[1]):
            raise ValueError("search 'random' takes [low, high] with low < high")
        return value

    @field_validator("num_samples")
    @classmethod
    def _grid_samples_once(cls, value: int, info: ValidationInfo) -> int:
        if info.data.get("search") == "grid" and value != 1:
            raise ValueError("search 'grid' runs every point once; num_samples is for "
                             "search 'random'")
        return value

    @field_validator("mode")
    @classmethod
    def _loss_is_minimised(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("metric") == "eval_loss" and value != "min":
            raise ValueError("metric eval_loss is a loss: mode must be 'min'")
        return value

    @field_validator("max_t")
    @classmethod
    def _grace_within_max_t(cls, value: int, info: ValidationInfo) -> int:
        grace = info.data.get("grace_period")
        if value and grace is not None and grace > value:
            raise ValueError(f"max_t {value} is below grace_period {grace}")
        return value
