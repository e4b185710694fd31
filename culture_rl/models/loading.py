"""Loading causal LMs: any Hugging Face model from local files, the 'tiny' preset, the real
models that install offline (:mod:`culture_rl.models.presets`), LoRA, export.

Nothing is downloaded: ``from_pretrained`` runs with ``local_files_only=True``, and a model that
is not there is a :class:`ConfigError` naming ``model.path``. The tiny preset is a small Llama
built from a config plus a byte-level BPE tokenizer trained on the synthetic corpus, both saved
with ``save_pretrained`` so every checkpoint reloads with ``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from culture_rl.config import LoraConfig, ModelConfig
from culture_rl.core.errors import ConfigError
from culture_rl.models import presets
from culture_rl.models.chat import apply_choice

SPECIAL_TOKENS = {"bos_token": "<|bos|>", "eos_token": "<|endoftext|>", "pad_token": "<|pad|>",
                  "unk_token": "<|unk|>"}
TINY_MARKER = "culture_rl_tiny.json"  # written beside tiny models so reports can say what it is


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Byte-level BPE (GPT-2 style: lossless for any UTF-8 text, Chinese included)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)


def build_tiny_model(config: ModelConfig, corpus: list[str], out_dir: str | Path, seed: int) -> Path:
    """Create and save an untrained tiny Llama and its tokenizer in ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(corpus, config.tiny.vocab_size)
    shape = config.tiny
    llama = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_heads, intermediate_size=shape.intermediate_size,
        max_position_embeddings=shape.max_position_embeddings, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / TINY_MARKER).write_text(json.dumps(shape.model_dump()), "utf-8")
    return out_dir


def check_available(path: str) -> None:
    """ConfigError (field model.path) unless ``path`` is a saved model folder or could be a
    hub name already in the local cache; a preset (culture_rl.models.presets) needs its
    package, and is converted when first loaded."""
    if presets.is_preset(path):
        presets.gguf_location(str(path))
        return
    local = Path(path).expanduser()
    if local.exists():
        if not (local / "config.json").is_file() and not (local / "adapter_config.json").is_file():
            raise ConfigError(f"{path!r} is a folder without config.json: not a saved model",
                              field="model.path")
        return
    if path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise ConfigError(f"model folder {path!r} does not exist", field="model.path")
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(path, "config.json"), str):
        raise ConfigError(f"{path!r} is neither a local folder nor in the local Hugging Face "
                          "cache (nothing is downloaded at run time: fetch it first with "
                          "`hf download` or give a folder on shared storage)",
                          field="model.path")


def prepare_model(path: str) -> str:
    """:func:`check_available`, and a preset converted now (once, in the driver) rather than by
    every worker that loads it at the same time; returns ``path`` unchanged (a preset keeps its
    name, so each node resolves it in its own cache)."""
    check_available(path)
    if presets.is_preset(path):
        presets.resolve(path)
    return path


def load_tokenizer(path: str | Path, trust_remote_code: bool = False,
                   chat_template: str = "auto"):
    """The tokenizer of a model (``chat_template``: ``model.chat_template``, see
    culture_rl.models.chat.apply_choice)."""
    from transformers import AutoTokenizer

    check_available(str(path))
    path = presets.resolve(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True,
                                                  trust_remote_code=trust_remote_code)
    except OSError as err:
        raise ConfigError(f"cannot load a tokenizer from {str(path)!r} (local files only; "
                          f"nothing is downloaded): {str(err).splitlines()[0]}",
                          field="model.path") from None
    if tokenizer.pad_token is None:  # Llama-family tokenizers ship without one
        tokenizer.pad_token = tokenizer.eos_token
    return apply_choice(tokenizer, chat_template)


def load_model(path: str | Path, dtype: str = "float32", trust_remote_code: bool = False):
    """A causal LM from a local folder or the local HF cache; a LoRA adapter folder loads its
    base model and applies the adapter."""
    import torch
    from transformers import AutoModelForCausalLM

    check_available(str(path))
    path = presets.resolve(path)
    torch_dtype = getattr(torch, dtype)
    adapter_config = Path(path) / "adapter_config.json"
    try:
        if adapter_config.is_file():
            from peft import PeftModel

            base_path = json.loads(adapter_config.read_text("utf-8"))["base_model_name_or_path"]
            base = load_model(base_path, dtype, trust_remote_code)
            return PeftModel.from_pretrained(base, str(path))
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype,
                                                    local_files_only=True,
                                                    trust_remote_code=trust_remote_code)
    except OSError as err:
        raise ConfigError(f"cannot load a model from {str(path)!r} (local files only; nothing "
                          f"is downloaded): {str(err).splitlines()[0]}",
                          field="model.path") from None


def peft_lora_config(config: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig

    targets = config.target_modules
    return PeftLoraConfig(
        r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout, task_type="CAUSAL_LM",
        target_modules="all-linear" if targets == ["all-linear"] else list(targets))


def export_merged(adapter_dir: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Merge a saved LoRA adapter into its base model and save a plain HF model + tokenizer."""
    model = load_model(adapter_dir, dtype)
    merged = model.merge_and_unload()
    out_dir = Path(out_dir)
    merged.save_pretrained(out_dir)
    load_tokenizer(adapter_dir).save_pretrained(out_dir)
    return out_dir
