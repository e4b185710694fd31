"""The smallest saved model a CLI test needs (commands that check their model before the data)."""

from __future__ import annotations

from pathlib import Path


def build_minimal_model(folder: Path) -> str:
    """A 1-layer, 16-wide Llama with a 300-token tokenizer trained on two template lines."""
    from culture_rl.config import ModelConfig, TinyModelConfig
    from culture_rl.models.loading import build_tiny_model

    shape = TinyModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                            vocab_size=300)
    texts = ["Cue: sun\nAnswer: hot, light", "Question: yes?\nAnswer: 1"] * 30
    return str(build_tiny_model(ModelConfig(tiny=shape), texts, folder, 0))
