"""The ``dpo:`` config section: the offline preference stage (`culture-rl dpo`).

``ExperimentConfig.dpo`` (in culture_rl/config). The stage trains TRL's ``DPOTrainer`` under Ray
Train + DeepSpeed, like SFT (culture_rl/train/sft.py), on pairs from the reflection loop, from
CultureSPA or from a file (culture_rl/data/preference_pairs.py); the losses map to TRL's loss
types in culture_rl/rl/preference.py.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from culture_rl.config.base import ConfigSection, FieldProblem, section_with_defaults
from culture_rl.config.train import TrainConfig

# The losses that read label_smoothing (the probability that a pair's preference is flipped).
SMOOTHED_LOSSES = ("cdpo", "robust")


class DpoConfig(ConfigSection):
    policy_path: str = Field("sft", description="Model the stage starts from, and its "
                             "reference (a LoRA adapter is trained on it; the adapter off is "
                             "the reference): 'sft' (this run's SFT export, trained first when "
                             "missing), 'pretrain' (this run's base model), a model folder, an "
                             "export folder (its model/ is used) or a local Hugging Face name.")
    pairs: Literal["reflection", "spa", "file"] = Field(
        "reflection", description="Where the (prompt, chosen, rejected) pairs come from: "
        "'reflection' (every revision of `culture-rl reflect` that beat its initial answer, "
        "<run>/reflect/pairs.jsonl), 'spa' (CultureSPA's culture-related instances: the "
        "culture-aware answer over the culture-unaware one, the culture named in the prompt, "
        "<run>/spa/related/data.jsonl) or 'file' (dpo.pairs_path).")
    pairs_path: str | None = Field(None, description="A JSON Lines file of pairs, one object "
                                   "a line with string fields prompt, chosen and rejected "
                                   "(others are ignored). Needed for pairs 'file'; for "
                                   "'reflection' and 'spa' it replaces this run's file.")
    loss: Literal["dpo", "ipo", "cdpo", "robust"] = Field(
        "dpo", description="Preference loss (TRL's DPOTrainer): 'dpo' (Rafailov et al. 2023, "
        "TRL 'sigmoid'), 'ipo' (Azar et al. 2023, TRL's per-token-normalised form), 'cdpo' "
        "(conservative DPO: labels flipped with probability label_smoothing, OpenRLHF's "
        "label-smoothed DPO), 'robust' (Chowdhury et al. 2024's unbiased rDPO).")
    beta: float = Field(0.1, gt=0, description="DPO's beta: how far the policy may move from "
                        "the reference (IPO: its regularisation tau).")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="cdpo and robust only: the "
                                   "probability that a pair's preference is wrong.")
    train: section_with_defaults(
        TrainConfig, epochs=2, learning_rate=5e-5, warmup_ratio=0.1, micro_batch_size=4,
        logging_steps=1, max_seq_length=256, eval_each_epoch=False
    ) = Field(description="Training loop (lora.* sets the adapter; max_seq_length bounds "
              "prompt + answer).")

    @model_validator(mode="after")
    def _pairs_and_smoothing_agree(self) -> "DpoConfig":
        if self.pairs == "file" and not self.pairs_path:
            raise FieldProblem("pairs_path", "dpo.pairs is 'file': set dpo.pairs_path to a "
                               "JSON Lines file of prompt/chosen/rejected pairs")
        if self.loss in SMOOTHED_LOSSES and self.label_smoothing == 0:
            raise FieldProblem("label_smoothing", f"dpo.loss {self.loss!r} with "
                               "label_smoothing 0 is plain DPO: set label_smoothing (e.g. 0.1) "
                               "or use loss 'dpo'")
        if self.loss not in SMOOTHED_LOSSES and self.label_smoothing:
            raise FieldProblem("label_smoothing", f"dpo.loss {self.loss!r} does not read "
                               "label_smoothing (only 'cdpo' and 'robust' do)")
        return self
