"""A CALM export seen as a causal LM: what the rollout workers, the policy trainer and the
evaluation harness serve when a model path is a ``calm/export`` folder.

:class:`CalmPolicy` keeps the :class:`~culture_rl.models.calm.CalmModel` in ``.module`` (the
attribute DeepSpeed engines use too), so weight sync and fingerprints name its tensors exactly as
the CalmModel does on both ends: the base model, its LoRA adapter (sent as the adapter, not
merged) and the CALM modules. Generation and every forward pass inject the identity state.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from torch import nn

from culture_rl.config.calm import CalmConfig
from culture_rl.models.calm import build_calm_model, load_calm_state, calm_state_dict
from culture_rl.models.loading import load_model


def is_calm_export(path) -> bool:
    """A ``calm/export`` folder (base or adapter + CALM modules, written by
    culture_rl.train.calm_export)."""
    return (Path(path) / "calm.json").is_file()


class CalmPolicy(nn.Module):
    """``forward(input_ids, attention_mask, ...) -> output with .logits`` and ``generate`` of a
    CalmModel.

    Position ids are not passed on: CALM's passes count them over the real tokens of the mask,
    as ``generate`` does (with a soft prefix too, which sits before the left padding), so the
    trainer's log-probs equal the generators' (the reflection loop's ``logprob_gap`` checks it).

    ``identity_mask`` marks the prompt: ``generate`` reads the identity state from the prompt
    before the first new token, so scoring a (prompt, response) sequence must read it from the
    same tokens (``culture_rl.rl.modeling.response_log_probs`` passes it to every model with
    ``reads_prompt_identity``). Read over the whole sequence instead, the identity would see
    the response it conditions and the trainer would score another model than the one the
    generators sampled from (``logprob_gap`` 0.19 per token on a trained CALM export)."""

    reads_prompt_identity = True

    def __init__(self, calm_model: nn.Module):
        super().__init__()
        self.module = calm_model

    @property
    def config(self):
        return self.module.config

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None,
                identity_mask=None, **_):
        return self.module(input_ids=input_ids, attention_mask=attention_mask,
                           identity_mask=identity_mask)

    def generate(self, *args, **kwargs):
        return self.module.generate(*args, **kwargs)


def load_calm_export(folder: str | Path):
    """(CalmModel in eval mode, tokenizer, meta) from a ``calm/export`` folder."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = json.loads((folder / "calm.json").read_text("utf-8"))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if meta["base"] == "adapter":
        from peft import PeftModel

        base = load_model(meta["base_model_path"], meta["dtype"])
        base = PeftModel.from_pretrained(base, str(folder / "adapter"))
    elif meta["base"] == "model":
        base = load_model(folder / "model", meta["dtype"])
    else:
        base = load_model(meta["base_model_path"], meta["dtype"])
    config = CalmConfig.model_validate(meta["calm_config"])
    model = build_calm_model(base, config, meta["num_cultures"], meta["num_labels"],
                             meta["num_concepts"])
    load_calm_state(model, load_file(str(folder / "calm.safetensors")))
    model.eval()
    return model, tokenizer, meta


def load_calm_policy(folder):
    """(CalmPolicy in eval mode, tokenizer, meta) from a CALM export folder."""
    model, tokenizer, meta = load_calm_export(folder)
    return CalmPolicy(model), tokenizer, meta


def mark_trainable(policy: CalmPolicy, meta: dict) -> int:
    """What a policy update trains: the LoRA adapter (or, when CALM trained every weight, the
    base) and the CALM modules; returns the number of trainable parameters."""
    calm_model = policy.module
    base_trainable = meta["base"] == "model"
    count = 0
    for name, param in calm_model.named_parameters():
        train = (name.startswith("calm.") or "lora_" in name
                 or (base_trainable and name.startswith("base.")))
        param.requires_grad_(train)
        count += param.numel() if train else 0
    return count


def save_calm_policy(policy: CalmPolicy, start: str | Path, folder: str | Path) -> None:
    """A CALM export of the trained policy in ``folder``: the starting export's config and
    tokenizer, the trained adapter (or model) and CALM modules. Its reference logits
    (``check.safetensors``) belonged to the starting weights and are not copied."""
    from safetensors.torch import save_file

    start, folder = Path(start), Path(folder)
    meta = json.loads((start / "calm.json").read_text("utf-8"))
    folder.mkdir(parents=True, exist_ok=True)
    if meta["base"] in ("adapter", "model"):
        policy.module.base.save_pretrained(str(folder / meta["base"]))
    shutil.copytree(start / "tokenizer", folder / "tokenizer", dirs_exist_ok=True)
    save_file({k: v.contiguous() for k, v in calm_state_dict(policy.module).items()},
              str(folder / "calm.safetensors"))
    (folder / "calm.json").write_text(json.dumps(meta, indent=2), "utf-8")
