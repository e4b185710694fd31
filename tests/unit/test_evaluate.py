"""Evaluation helpers on a small random Llama (no training needed: the maths must hold for any
weights)."""

from __future__ import annotations

import pytest
import torch

from culture_rl.config import ModelConfig, TinyModelConfig
from culture_rl.data.surveys import SurveyQuestion
from culture_rl.eval.evaluate import association_scores, survey_scores
from culture_rl.inference.generation import (continuation_logprobs, generate_answers,
                                             option_distributions)
from culture_rl.eval.metrics import distribution_scores
from culture_rl.models.loading import build_tiny_model, load_model, load_tokenizer

TEXTS = ["Cue: cat\nAnswer: dog, mouse, milk", "Question: Is it good?\nAnswer: 1",
         "The quick brown fox jumps over the lazy dog."] * 20


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    shape = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                            vocab_size=300)
    path = build_tiny_model(ModelConfig(tiny=shape), TEXTS, tmp_path_factory.mktemp("m"), 0)
    return load_model(path), load_tokenizer(path)


def test_association_scores_by_hand():
    scores = association_scores(["a, b, c", "x, y", ""], [["a", "c"], ["y"], ["z"]], [1, 2])
    assert scores["p@1"] == pytest.approx((1 + 0 + 0) / 3)
    assert scores["p@2"] == pytest.approx((0.5 + 0.5 + 0) / 3)
    assert scores["parse_failure_rate"] == pytest.approx(1 / 3)
    assert scores["n_cues"] == 3
    # The answers' lengths: 3, 2 and 0 parsed words; 7, 4 and 0 characters.
    assert (scores["answer_words_median"], scores["answer_words_p90"],
            scores["answer_words_max"]) == (2, 3, 3)
    assert scores["answer_chars_median"] == 4 and scores["answer_chars_max"] == 7


def test_survey_scores_average_over_questions_with_the_culture():
    questions = [SurveyQuestion("1", "q", ("a", "b"), {"X": (0.9, 0.1), "Y": (0.5, 0.5)}),
                 SurveyQuestion("2", "q", ("a", "b"), {"Y": (0.2, 0.8)})]
    model = [[0.6, 0.4], [0.3, 0.7]]
    result = survey_scores(model, questions, "Y")
    expected_js = (distribution_scores(model[0], (0.5, 0.5))["js"]
                   + distribution_scores(model[1], (0.2, 0.8))["js"]) / 2
    assert result["js"] == pytest.approx(expected_js) and result["n_questions"] == 2
    assert survey_scores(model, questions, "X")["n_questions"] == 1


def test_continuation_logprob_matches_a_direct_computation(tiny):
    model, tokenizer = tiny
    prompt, continuation = "Cue: cat\nAnswer:", " dog, mouse"
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([p_ids + c_ids])).logits[0]
    logprobs = torch.log_softmax(logits, -1)
    direct = sum(float(logprobs[len(p_ids) + i - 1, t]) for i, t in enumerate(c_ids))
    pairs = [(prompt, continuation), ("Question: Is it good?\nAnswer:", " 1"),
             ("x", " the lazy dog")]
    batched = continuation_logprobs(model, tokenizer, pairs, batch_size=3)
    single = [continuation_logprobs(model, tokenizer, [p], batch_size=1)[0] for p in pairs]
    assert batched[0] == pytest.approx(direct, abs=1e-4)
    assert batched == pytest.approx(single, abs=1e-4)  # right padding does not leak in


def test_option_distributions_are_distributions(tiny):
    model, tokenizer = tiny
    dists = option_distributions(model, tokenizer, ["Question: Is it good?\nAnswer:"] * 2,
                                 [[" 1", " 2"], [" 1", " 2", " 3", " 4"]])
    assert [len(d) for d in dists] == [2, 4]
    assert all(sum(d) == pytest.approx(1.0) for d in dists)


def test_batched_generation_equals_one_at_a_time(tiny):
    model, tokenizer = tiny
    prompts = ["Cue: cat\nAnswer:", "The quick brown", "Question: Is it good?\nAnswer:"]
    batched = generate_answers(model, tokenizer, prompts, max_new_tokens=8, batch_size=3)
    single = [generate_answers(model, tokenizer, [p], max_new_tokens=8, batch_size=1)[0]
              for p in prompts]
    assert batched == single
    assert tokenizer.padding_side == "right"  # restored
