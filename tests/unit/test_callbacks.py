"""Training callbacks outside Ray: the held-out P@k, the resume-time metrics rewrite."""

from __future__ import annotations

import json

import pytest

from culture_rl.config import ModelConfig, TinyModelConfig
from culture_rl.inference.generation import generate_answers
from culture_rl.eval.metrics import precision_at_k
from culture_rl.models.loading import build_tiny_model, load_model, load_tokenizer
from culture_rl.train.callbacks import HeldOutPrecision, drop_records_after, _format_progress


def test_held_out_precision_is_the_mean_p_at_k(tmp_path):
    texts = ["Cue: cat\nAnswer: dog, mouse, milk", "Cue: sun\nAnswer: hot, day"] * 30
    shape = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                            vocab_size=300)
    path = build_tiny_model(ModelConfig(tiny=shape), texts, tmp_path, 0)
    model, tokenizer = load_model(path), load_tokenizer(path)
    prompts = ["Cue: cat\nAnswer:", "Cue: sun\nAnswer:", "Cue: dog\nAnswer:"]
    answers = generate_answers(model, tokenizer, prompts, max_new_tokens=6)
    human = [answers[0].split(",")[:1], ["nothing"], answers[2].split(",")[:2]]
    expected = sum(precision_at_k(a, h, 5) for a, h in zip(answers, human)) / 3
    callback = HeldOutPrecision(tokenizer, prompts, human, k=5, max_new_tokens=6)
    assert callback.score(model) == pytest.approx(expected)


def test_resume_drops_records_past_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 7)))
    drop_records_after(path, 4)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]


def test_progress_line():
    line = _format_progress({"step": 3, "epoch": 0.5, "loss": 1.23456, "tokens_per_s": 812.4,
                             "learning_rate": 1e-4}, 10)
    assert line.startswith("step 3/10") and "loss 1.2346" in line and "tokens_per_s 812" in line
