"""The trainer's weights as the plain Hugging Face model names them: LoRA merged in, ZeRO-3
shards gathered, tied weights once (what weight sync sends and the generators load).

Kept apart from :mod:`culture_rl.distributed.weight_sync` (which packs and moves these tensors):
this module only reads a model. ``weight_sync`` re-exports its names.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from typing import Iterator

import torch


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DeepSpeed engine (or DDP): both keep it in ``.module``."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def _gathered(params: list, gather_zero3: bool):
    """All-gather ZeRO-3 shards of ``params`` for the duration of the block (a collective).

    ``modifier_rank=None``: we only read, so nothing is broadcast back on exit."""
    sharded = [p for p in params if hasattr(p, "ds_id")]
    if not sharded:
        return nullcontext()
    if not gather_zero3:
        raise ValueError("the model's parameters are partitioned by DeepSpeed ZeRO-3; pass "
                         "gather_zero3=True and call this on every rank in the same order")
    import deepspeed

    return deepspeed.zero.GatheredParameters(sharded, modifier_rank=None)


def _merged_weight(layer, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` with the layer's active, not already merged adapters applied, as peft's own
    merge does it (a new tensor; the layer is untouched): plain LoRA adds its delta, a variant
    (DoRA and the others) applies its ``merge_safe``."""
    if layer.disable_adapters:
        return weight
    for adapter in layer.active_adapters:
        if adapter in layer.merged_adapters:
            continue  # already inside the base weight
        if adapter not in layer.lora_A and adapter not in layer.lora_embedding_A:
            continue  # this adapter does not touch this layer
        variant = getattr(layer, "lora_variant", {}).get(adapter)
        with torch.no_grad():
            if variant is not None:
                weight = variant.merge_safe(layer, adapter, weight)
            else:
                weight = weight + layer.get_delta_weight(adapter).to(weight.dtype)
    return weight


def iter_export_tensors(model: torch.nn.Module,
                        gather_zero3: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every weight, named as the plain Hugging Face model names it.

    Accepts a plain HF model, a DeepSpeed engine around one, or a peft ``PeftModel``: LoRA
    layers yield the merged weight (``W + delta``, or a variant's merge such as DoRA's; a new
    tensor, the trainer's model is untouched) under the base
    layer's plain name, and adapter parameters are not yielded. Tied weights appear once, in
    ``named_parameters`` order. Yielded tensors are detached views of live weights (or, under
    ZeRO-3, of gathered buffers that are freed when the generator moves on): copy each one
    before asking for the next, as :func:`~culture_rl.distributed.weight_sync.make_buckets` does.
    """
    root = unwrap_model(model)
    lora_layer = modules_to_save = ()  # isinstance against () is always False
    peft = sys.modules.get("peft")  # a model can only be a PeftModel if peft is imported
    if peft is not None and isinstance(root, peft.PeftModel):
        from peft.tuners.lora import LoraLayer
        from peft.utils import ModulesToSaveWrapper

        root = root.get_base_model()  # drops the 'base_model.model.' prefix
        lora_layer, modules_to_save = LoraLayer, ModulesToSaveWrapper
    seen: set[int] = set()  # parameter ids already yielded: tied weights go once

    def walk(prefix: str, module: torch.nn.Module):
        if isinstance(module, modules_to_save):  # a fully trained copy of a module
            active = module.active_adapters
            module = module.modules_to_save[active[0]] if active else module.original_module
        if isinstance(module, lora_layer):
            with _gathered(list(module.parameters()), gather_zero3):
                for name, param in module.get_base_layer().named_parameters():
                    if id(param) in seen:
                        continue
                    seen.add(id(param))
                    tensor = param.detach()
                    if name == "weight":
                        tensor = _merged_weight(module, tensor)
                    yield prefix + name, tensor  # '.base_layer' is not in the name
            return
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if id(p) not in seen]
        with _gathered([p for _, p in own], gather_zero3):
            for name, param in own:
                seen.add(id(param))
                yield prefix + name, param.detach()
        for name, child in module.named_children():
            yield from walk(f"{prefix}{name}.", child)

    yield from walk("", root)


def state_fingerprint(model: torch.nn.Module, gather_zero3: bool = False) -> dict[str, float]:
    """Per-weight float64 sum by plain HF name (LoRA merged): a cheap checksum for tests."""
    return {name: float(tensor.double().sum())
            for name, tensor in iter_export_tensors(model, gather_zero3)}
