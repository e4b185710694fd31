"""The CALM-only weights of a model: its modules' parameters and state, apart from the base LM's
(CALM modules are saved beside the base model and its LoRA adapter)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from culture_rl.models.calm import CalmModel


def unwrap_calm(model: nn.Module) -> CalmModel:
    # DeepSpeed engines and DDP keep the model in .module.
    from culture_rl.models.calm import CalmModel  # the wrapper imports this module

    while not isinstance(model, CalmModel) and hasattr(model, "module"):
        model = model.module
    if not isinstance(model, CalmModel):
        raise TypeError(f"expected a CalmModel (or a wrapper of one), got {type(model).__name__}")
    return model


def calm_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The CALM modules' parameters (for their own optimizer group), never the base LM's."""
    return list(unwrap_calm(model).calm.parameters())


def calm_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The CALM modules' weights only (keys relative to ``model.calm``), detached CPU copies:
    saved beside the base model and its LoRA adapter. Under ZeRO-3 call it inside
    ``deepspeed.zero.GatheredParameters(calm_parameters(model))``."""
    return {name: tensor.detach().cpu().clone()
            for name, tensor in unwrap_calm(model).calm.state_dict().items()}


def load_calm_state(model: nn.Module, state: dict[str, torch.Tensor]) -> CalmModel:
    """Restore what :func:`calm_state_dict` saved (strict: a state from a different CALM
    config fails with the missing/unexpected keys); returns the model."""
    calm_model = unwrap_calm(model)
    calm_model.calm.load_state_dict(state, strict=True)
    return calm_model
