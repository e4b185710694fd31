"""The harness's registered evaluations against hand-built fixtures with known answers.

Generation runs on a real tiny Llama trained here for a few seconds to memorise three answers
(so its greedy outputs are known exactly); the survey and value evaluations use a "model" whose
option distributions are given (they read nothing else from a model).
"""

from __future__ import annotations

import statistics

import pytest
import torch

from culture_rl.config import ModelConfig, TinyModelConfig
from culture_rl.data import prompts
from culture_rl.data.surveys import SurveyQuestion
from culture_rl.eval.evaluate import (EVALUATIONS, EvalInputs, evaluate, lexical_comparisons,
                                      sample_statements)
from culture_rl.inference.generation import generate_answers
from culture_rl.inference.pools import LocalInference, contiguous_chunks
from culture_rl.eval.metrics import concrete_share, tension_score, wilcoxon_paired
from culture_rl.models.loading import build_tiny_model, load_model, load_tokenizer

RANKING_WORDS = ["hot", "day", "light"]
MEMORISED = [(prompts.association_prompt("sun"), " hot, light, sky"),
             (prompts.association_prompt("tea"), " cup, green"),
             (prompts.ranking_prompt("sun", RANKING_WORDS),
              " Final Ranking:\n1: light\n2: day\n3: hot")]
NORMS = {"A": {"sun": [("light", 50), ("hot", 30), ("day", 10)], "tea": [("cup", 9), ("milk", 5)]},
         "B": {"sun": [("moon", 40), ("sky", 20)], "tea": [("green", 7), ("cup", 3)]}}
LEXICON = {"hot": {"valence": 6.0, "arousal": 6.0, "dominance": 5.0, "concreteness": 4.0},
           "light": {"valence": 7.0, "arousal": 4.0, "dominance": 6.0, "concreteness": 3.0},
           "sky": {"valence": 7.0, "arousal": 3.0, "dominance": 5.0, "concreteness": 4.5},
           "cup": {"valence": 5.0, "arousal": 2.0, "dominance": 5.0, "concreteness": 5.0},
           "green": {"valence": 6.0, "arousal": 3.0, "dominance": 5.0, "concreteness": 2.0},
           "day": {"valence": 6.0, "arousal": 4.0, "dominance": 5.0, "concreteness": 2.5},
           "milk": {"valence": 5.0, "arousal": 2.0, "dominance": 4.0, "concreteness": 5.0},
           "moon": {"valence": 7.0, "arousal": 3.0, "dominance": 4.0, "concreteness": 4.0}}


@pytest.fixture(scope="module")
def memorised(tmp_path_factory):
    """A tiny Llama that answers the three MEMORISED prompts exactly (checked here)."""
    shape = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                            vocab_size=300)
    path = build_tiny_model(ModelConfig(tiny=shape), [p + c for p, c in MEMORISED] * 20,
                            tmp_path_factory.mktemp("memorised"), 0)
    model, tokenizer = load_model(path), load_tokenizer(path)
    encoded = tokenizer([p + c + tokenizer.eos_token for p, c in MEMORISED], return_tensors="pt",
                        padding=True, add_special_tokens=False)
    labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    model.train()
    for _ in range(300):
        loss = model(**encoded, labels=labels).loss
        if loss.item() < 0.005:
            break
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    answers = generate_answers(model, tokenizer, [p for p, _ in MEMORISED], max_new_tokens=40)
    assert [a.strip() for a in answers] == [c.strip() for _, c in MEMORISED], answers
    return LocalInference(model, tokenizer, batch_size=2)


class GivenDistributions:
    """A "model" whose answer distributions are given: prompt text -> distribution."""

    def __init__(self, by_prompt_part: dict[str, list[float]]):
        self.by_part = by_prompt_part

    def generate(self, prompts_, max_new_tokens):
        raise AssertionError("this evaluation must not generate")

    def option_distributions(self, prompts_, labels):
        out = []
        for prompt, options in zip(prompts_, labels):
            match = [d for part, d in self.by_part.items() if part in prompt]
            assert len(match) == 1 and len(match[0]) == len(options), prompt
            out.append(match[0])
        return out


def _inputs(**overrides) -> EvalInputs:
    fields = dict(cultures=["A", "B"], target_culture="B", norms_by_culture=NORMS,
                  cues=["sun", "tea"], lexicon=LEXICON, k_values=(1, 3),
                  ranking={"A": [{"prompt": MEMORISED[2][0], "cue": "sun",
                                  "words": RANKING_WORDS, "human_order": ["light", "hot", "day"]}]},
                  max_new_tokens=16, ranking_max_new_tokens=40, human_associations=2)
    fields.update(overrides)
    return EvalInputs(**fields)


def _values(run, evaluation: str) -> dict:
    return {(r["culture"], r["metric"], r["subset"]): (r["value"], r["n"])
            for r in run.records if r["evaluation"] == evaluation}


def test_every_evaluation_is_registered():
    assert set(EVALUATIONS) == {"associations", "lexical_norms", "wvs", "high_tension",
                                "value_classification", "ranking"}


def test_associations_precision_by_hand(memorised):
    run = evaluate("m", memorised, _inputs(), ["associations"])
    values = _values(run, "associations")
    # sun -> "hot, light, sky", tea -> "cup, green"
    assert values[("A", "p@1", "all")] == (pytest.approx((1 + 1) / 2), 2)  # hot; cup
    assert values[("A", "p@3", "all")][0] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert values[("B", "p@1", "all")][0] == pytest.approx((0 + 1) / 2)  # -; cup
    assert values[("B", "p@3", "all")][0] == pytest.approx((1 / 3 + 2 / 3) / 2)  # sky; cup, green
    assert values[("A", "parse_failure_rate", "all")][0] == 0.0
    assert run.details["samples"][0] == {"cue": "sun", "answer": "hot, light, sky"}


def test_lexical_norms_by_hand(memorised):
    run = evaluate("m", memorised, _inputs(), ["lexical_norms"])
    values = _values(run, "lexical_norms")
    # Model, per cue: sun {hot, light, sky} valence median 7, tea {cup, green} median 5.5.
    assert values[("A", "median_valence", "all")][0] == pytest.approx(statistics.median([7, 5.5]))
    # Human A (top 2): sun {light, hot} median 6.5; tea {cup, milk} median 5.
    assert values[("A", "human_median_valence", "all")][0] == pytest.approx(5.75)
    # |7 - 6.5| = 0.5 and |5.5 - 5| = 0.5
    assert values[("A", "gap_valence", "all")] == (pytest.approx(0.5), 2)
    # concreteness: hot 4, light 3, sky 4.5, cup 5, green 2 -> 4 of 5 at >= 3
    assert values[("A", "concrete_share", "all")][0] == pytest.approx(0.8)
    assert values[("A", "coverage", "all")][0] == 1.0
    assert run.details["lexical_norms"]["B"]["cues"] == ["sun", "tea"]


def test_lexical_comparisons_name_the_closer_model():
    details = {
        "near": {"lexical_norms": {"A": {"cues": ["x", "y", "z"],
                                         "gap": {n: [0.1, 0.2, 0.1] for n in
                                                 ("valence", "arousal", "dominance",
                                                  "concreteness")}}}},
        "far": {"lexical_norms": {"A": {"cues": ["z", "y", "x"],
                                        "gap": {n: [1.0, 2.0, None] for n in
                                                ("valence", "arousal", "dominance",
                                                 "concreteness")}}}}}
    rows = lexical_comparisons(details)
    assert len(rows) == 4 and {r["norm"] for r in rows} == {"valence", "arousal", "dominance",
                                                            "concreteness"}
    row = rows[0]
    assert (row["model_a"], row["model_b"], row["closer"]) == ("near", "far", "near")
    assert row["n"] == 2  # cue x has no gap for "far": paired by cue, not by position
    assert row["median_gap_a"] == pytest.approx(0.15) and row["median_gap_b"] == pytest.approx(1.5)


def test_ranking_rho_by_hand(memorised):
    run = evaluate("m", memorised, _inputs(), ["ranking"])
    values = _values(run, "ranking")
    # human order light, hot, day; model ranks light 1, day 2, hot 3 -> ranks (1, 3, 2): rho 0.5
    assert values[("A", "rho", "all")] == (pytest.approx(0.5), 1)
    assert values[("A", "parse_failure_rate", "all")][0] == 0.0
    assert ("B", "rho", "all") not in values  # no prompts for B: no record, not a zero


SURVEY = [SurveyQuestion("q1", "Is trust good?", ("yes", "no"), {"A": (0.9, 0.1), "B": (0.1, 0.9)}),
          SurveyQuestion("q2", "Is rain good?", ("yes", "maybe", "no"),
                         {"A": (0.5, 0.3, 0.2), "B": (0.4, 0.3, 0.3)}),
          SurveyQuestion("q3", "Is art good?", ("yes", "no"), {"A": (0.6, 0.4), "B": (0.4, 0.6)})]
GIVEN = {"trust": [0.2, 0.8], "rain": [0.5, 0.3, 0.2], "art": [0.55, 0.45]}


def test_wvs_scores_overall_and_by_number_of_options():
    run = evaluate("m", GivenDistributions(GIVEN), _inputs(survey=SURVEY), ["wvs"])
    values = _values(run, "wvs")
    assert values[("A", "argmax_agree", "all")] == (pytest.approx(2 / 3), 3)
    assert values[("B", "argmax_agree", "all")][0] == pytest.approx(2 / 3)  # q1 and q2
    assert values[("A", "js", "options=3")] == (pytest.approx(0.0, abs=1e-9), 1)  # q2 exact
    assert values[("A", "argmax_agree", "options=2")] == (pytest.approx(0.5), 2)
    assert {m for _, m, _ in values} == {"js", "emd", "kl_model_culture", "kl_culture_model",
                                         "cosine", "argmax_agree"}


def test_high_tension_counts_items_closer_to_each_culture():
    inputs = _inputs(survey=SURVEY, tension_pair=("A", "B"), tension_top_n=2)
    run = evaluate("m", GivenDistributions(GIVEN), inputs, ["high_tension"])
    values = _values(run, "high_tension")
    # The two most disputed questions are q1 (0.9/0.1 vs 0.1/0.9) and q3; the model is near
    # B on q1 and near A on q3.
    assert values[("A", "items_closer", "A|B")] == (1, 2)
    assert values[("B", "items_closer", "A|B")] == (1, 2)
    items = run.details["high_tension"]["items"]
    assert [i["id"] for i in items] == ["q1", "q3"]
    assert items[0]["distance_a"] == pytest.approx(tension_score([0.2, 0.8], [0.9, 0.1]))


def test_value_classification_accuracy_and_macro_f1():
    statements = [{"text": "elders know best", "label": "tradition", "culture": "A"},
                  {"text": "rules may be questioned", "label": "autonomy", "culture": "A"},
                  {"text": "festivals bind us", "label": "tradition", "culture": "B"},
                  {"text": "one should think alone", "label": "autonomy", "culture": "B"}]
    # Options are the sorted labels: 1 autonomy, 2 tradition. One B statement is misread.
    given = {"elders": [0.1, 0.9], "rules": [0.8, 0.2], "festivals": [0.7, 0.3],
             "think alone": [0.6, 0.4]}
    run = evaluate("m", GivenDistributions(given), _inputs(statements=statements),
                   ["value_classification"])
    values = _values(run, "value_classification")
    assert values[("all", "accuracy", "all")] == (pytest.approx(0.75), 4)
    assert values[("A", "accuracy", "all")] == (pytest.approx(1.0), 2)
    assert values[("B", "accuracy", "all")] == (pytest.approx(0.5), 2)
    # B: true [tradition, autonomy], predicted [autonomy, autonomy]: F1 autonomy 2/3, tradition 0
    assert values[("B", "macro_f1", "all")][0] == pytest.approx((2 / 3 + 0) / 2)


def test_culture_prompt_prefixes_each_cultures_preamble():
    seen = []

    class Recorder(GivenDistributions):
        def option_distributions(self, prompts_, labels):
            seen.extend(prompts_)
            return super().option_distributions(prompts_, labels)

    evaluate("m", Recorder(GIVEN), _inputs(survey=SURVEY, culture_prompt=True), ["wvs"])
    assert sum(p.startswith(prompts.culture_preamble("A")) for p in seen) == 3
    assert sum(p.startswith(prompts.culture_preamble("B")) for p in seen) == 3
    seen.clear()
    evaluate("m", Recorder(GIVEN), _inputs(survey=SURVEY), ["wvs"])
    assert len(seen) == 3 and not any("You are" in p for p in seen)  # one pass for all cultures


def test_wilcoxon_paired_matches_scipy_and_handles_ties():
    from scipy.stats import wilcoxon

    x, y = [1.0, 2.5, 3.0, 4.2, 5.1, 6.3], [1.5, 2.0, 3.9, 5.0, 6.4, 7.0]
    result = wilcoxon_paired(x, y)
    assert result["p_value"] == pytest.approx(wilcoxon([a - b for a, b in zip(x, y)]).pvalue)
    assert result["n"] == 6 and result["median_difference"] < 0
    assert wilcoxon_paired([1, 2], [1, 2])["p_value"] == 1.0
    assert wilcoxon_paired([], [])["p_value"] is None
    with pytest.raises(ValueError):
        wilcoxon_paired([1], [1, 2])


def test_concrete_share_counts_rated_words_only():
    assert concrete_share(["hot", "green", "unknown"], LEXICON) == pytest.approx(0.5)
    assert concrete_share(["unknown"], LEXICON) is None


def test_statement_sample_is_seeded_and_keeps_order():
    rows = [{"id": i} for i in range(50)]
    first, again = sample_statements(rows, 10, 3), sample_statements(rows, 10, 3)
    assert first == again and len(first) == 10
    assert [r["id"] for r in first] == sorted(r["id"] for r in first)
    assert sample_statements(rows, 0, 3) == rows


def test_contiguous_chunks_cover_every_item_once():
    for n, workers in [(0, 2), (1, 2), (5, 2), (7, 3)]:
        chunks = contiguous_chunks(n, workers)
        assert [i for a, b in chunks for i in range(a, b)] == list(range(n))
        assert len(chunks) <= workers
