"""The training-loop settings shared by ``pretrain:``, ``sft:`` and ``spa.train:`` (TRL's
SFTTrainer under Ray Train; culture_rl/train/sft.py).

``ExperimentConfig.pretrain`` / ``.sft`` and ``SpaConfig.train`` (culture_rl/config/__init__.py,
culture_rl/config/spa.py).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from culture_rl.config.base import ConfigSection

class TrainConfig(ConfigSection):
    epochs: float = Field(3, gt=0, description="Passes over the training set.")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: epochs "
                           "decide).")
    learning_rate: float = Field(1e-4, gt=0, description="Peak learning rate.")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    micro_batch_size: int = Field(8, gt=0, description="Sequences per worker per forward pass.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Micro batches per optimizer "
                                             "step. Global batch = micro x accumulation x "
                                             "workers.")
    max_seq_length: int = Field(128, gt=8, description="Sequences are truncated to this many "
                                "tokens.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the "
                                         "backward pass: less memory, ~30% more compute.")
    packing: Literal["wrapped", "bfd", "none"] = Field(
        "wrapped", description="Plain-LM jobs (pretrain) only: 'wrapped' concatenates documents "
        "and cuts max_seq_length rows (fastest; a document split across rows loses its start, "
        "e.g. its culture preamble); 'bfd' packs whole documents best-fit with per-document "
        "attention (half the speed on CPU); 'none' trains one document per padded row.")
    save_steps: int = Field(0, ge=0, description="Checkpoint every N steps (0: once per epoch).")
    logging_steps: int = Field(5, gt=0, description="Log loss and tokens/s every N steps.")
    eval_each_epoch: bool = Field(True, description="Validation loss and held-out P@5 after "
                                  "every epoch.")
    eval_max_cues: int = Field(32, gt=0, description="Validation cues used for P@5 per epoch.")
    fault_injection_step: int = Field(0, ge=0, description="Testing aid: fail the run right "
                                      "after the checkpoint of this step, unless it resumed "
                                      "from a checkpoint (0: off).")
    log_sample_ids: bool = Field(False, description="Append a hash of every sample each "
                                 "optimizer step trains on to <stage dir>/samples/rank<r>.jsonl "
                                 "(an audit that recovery after a failure neither replays nor "
                                 "skips data).")
