"""Unit tests for culture_rl.eval.metrics: checked against scipy and hand computations."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy, spearmanr, wasserstein_distance

from culture_rl.eval import metrics as m

# --------------------------------------------------------------------------- split_answer


def test_split_answer_english_numbered_lines():
    text = "1. Cat\n2) dog\n3: 'Fish'.\n- bird\n* Cat\n\n"
    assert m.split_answer(text) == ["cat", "dog", "fish", "bird"]


def test_split_answer_chinese_separators():
    assert m.split_answer("猫，狗、鱼") == ["猫", "狗", "鱼"]


def test_split_answer_chinese_numbered_and_quoted():
    assert m.split_answer("1、“猫”\n2、狗。\n3. 猫") == ["猫", "狗"]


def test_split_answer_commas_semicolons_and_dedup():
    assert m.split_answer(' Apple, banana; "apple" ,, cherry ') == ["apple", "banana", "cherry"]


def test_split_answer_keeps_decimal_numbers():
    assert m.split_answer("3.5, 1. x") == ["3.5", "x"]


def test_split_answer_empty():
    assert m.split_answer("") == []
    assert m.split_answer(" , ;\n") == []


# --------------------------------------------------------------------------- precision_at_k


def test_precision_at_k_divides_by_k_even_when_fewer_predicted():
    assert m.precision_at_k(["a", "b", "x"], ["a", "b", "c"], 5) == pytest.approx(0.4)


def test_precision_at_k_takes_first_k_distinct_normalised():
    # distinct first-3 = a, b, x  -> 2 hits out of 3
    assert m.precision_at_k([" A", "a", "b", "x", "c"], ["a", "B ", "c"], 3) == pytest.approx(2 / 3)


def test_precision_at_k_string_input_uses_split_answer():
    assert m.precision_at_k("1. Cat\n2. dog\n3. tree", ["cat", "tree"], 2) == pytest.approx(0.5)
    assert m.precision_at_k("猫，狗、鱼", ["狗", "鱼"], 3) == pytest.approx(2 / 3)


def test_precision_at_k_rejects_bad_k():
    with pytest.raises(ValueError):
        m.precision_at_k(["a"], ["a"], 0)


# --------------------------------------------------------------------------- distributions

PAIRS = [
    ([0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]),
    ([0.7, 0.1, 0.2], [0.2, 0.5, 0.3]),
    ([1.0, 2.0, 3.0, 4.0, 5.0], [5.0, 1.0, 1.0, 1.0, 2.0]),  # unnormalised on purpose
    ([0.5, 0.5], [0.9, 0.1]),
]


@pytest.mark.parametrize(("p", "q"), PAIRS)
def test_js_distance_matches_scipy(p, q):
    assert m.js_distance(p, q) == pytest.approx(jensenshannon(p, q, base=2), abs=1e-12)


@pytest.mark.parametrize(("p", "q"), PAIRS)
def test_emd_matches_scipy_wasserstein_on_positions(p, q):
    n = len(p)
    expected = wasserstein_distance(range(n), range(n), p, q) / (n - 1)
    assert m.emd_normalized(p, q) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("p", "q"), PAIRS)
def test_kl_matches_scipy_entropy_on_positive_inputs(p, q):
    assert m.kl_divergence(p, q) == pytest.approx(entropy(p, q), abs=1e-8)
    assert m.kl_divergence(q, p) == pytest.approx(entropy(q, p), abs=1e-8)


def test_distance_extremes():
    assert m.js_distance([1, 0], [0, 1]) == pytest.approx(1.0)
    assert m.emd_normalized([1, 0, 0, 0], [0, 0, 0, 1]) == pytest.approx(1.0)
    assert m.js_distance([0.2, 0.8], [0.2, 0.8]) == 0.0
    assert m.emd_normalized([0.3, 0.7], [0.3, 0.7]) == 0.0
    assert m.emd_normalized([1.0], [1.0]) == 0.0


def test_emd_hand_computed():
    # CDFs: p = .5, 1, 1 ; q = 0, .5, 1 -> |diff| = .5 + .5 = 1.0 over n-1 = 2 -> 0.5
    assert m.emd_normalized([0.5, 0.5, 0.0], [0.0, 0.5, 0.5]) == pytest.approx(0.5)


def test_cosine_and_argmax_hand_computed():
    # cosine is scale-invariant: [1,2,2] vs [2,1,2] -> (2+2+4)/(3*3)
    assert m.cosine_similarity([1, 2, 2], [2, 1, 2]) == pytest.approx(8 / 9)
    assert m.argmax_agreement([0.1, 0.6, 0.3], [0.2, 0.5, 0.3]) == 1.0
    assert m.argmax_agreement([0.1, 0.6, 0.3], [0.5, 0.2, 0.3]) == 0.0


def test_zero_mass_options_give_finite_numbers():
    p, q = [0.5, 0.5, 0.0], [0.0, 0.5, 0.5]
    scores = m.distribution_scores(p, q)
    assert set(scores) == {"js", "emd", "kl_pq", "kl_qp", "cosine", "argmax_agree"}
    assert all(math.isfinite(v) for v in scores.values())
    assert scores["js"] == pytest.approx(jensenshannon(p, q, base=2), abs=1e-12)
    assert scores["cosine"] == pytest.approx(0.5)
    # epsilon smoothing keeps KL finite but large; 0 -> 0 terms contribute nothing
    assert 5.0 < scores["kl_pq"] < 50.0
    assert m.kl_divergence([0.5, 0.5, 0.0], [0.5, 0.5, 0.0]) == pytest.approx(0.0, abs=1e-8)
    assert math.isfinite(m.tension_score(p, q))


@pytest.mark.parametrize(
    ("p", "q"),
    [
        ([0.5, 0.5], [0.3, 0.3, 0.4]),  # length mismatch
        ([0.5, -0.1, 0.6], [0.3, 0.3, 0.4]),  # negative
        ([0.0, 0.0], [0.5, 0.5]),  # no mass
        ([float("nan"), 0.5], [0.5, 0.5]),  # NaN
        ([], []),  # empty
    ],
)
def test_invalid_distributions_raise(p, q):
    for fn in (m.js_distance, m.emd_normalized, m.kl_divergence, m.cosine_similarity,
               m.argmax_agreement, m.distribution_scores, m.tension_score):
        with pytest.raises(ValueError):
            fn(p, q)


def test_length_mismatch_message_is_clear():
    with pytest.raises(ValueError, match="length"):
        m.js_distance([0.5, 0.5], [1.0, 0.0, 0.0])


def test_tension_score_is_mean_of_js_and_emd():
    p, q = [0.7, 0.2, 0.1], [0.1, 0.3, 0.6]
    expected = 0.5 * jensenshannon(p, q, base=2) + 0.5 * wasserstein_distance(
        range(3), range(3), p, q
    ) / 2
    assert m.tension_score(p, q) == pytest.approx(expected, abs=1e-12)


# --------------------------------------------------------------------------- high tension


@dataclass
class Q:
    id: str
    distributions: dict = field(default_factory=dict)


def _questions_as_dicts():
    return [
        {"id": "same", "distributions": {"A": [0.5, 0.5], "B": [0.5, 0.5]}},
        {"id": "far", "distributions": {"A": [1.0, 0.0], "B": [0.0, 1.0]}},
        {"id": "mid", "distributions": {"A": [0.8, 0.2], "B": [0.3, 0.7]}},
        {"id": "far2", "distributions": {"A": [0.0, 1.0], "B": [1.0, 0.0]}},  # ties with "far"
        {"id": "no_b", "distributions": {"A": [1.0, 0.0], "C": [0.0, 1.0]}},
        {"id": "none"},
    ]


def test_high_tension_items_with_dicts():
    top = m.high_tension_items(_questions_as_dicts(), "A", "B", 3)
    assert [q["id"] for q in top] == ["far", "far2", "mid"]


def test_high_tension_items_with_dataclasses():
    qs = [Q(d["id"], d.get("distributions", {})) for d in _questions_as_dicts()]
    assert [q.id for q in m.high_tension_items(qs, "A", "B", 10)] == ["far", "far2", "mid", "same"]
    assert [q.id for q in m.high_tension_items(qs, "A", "B", 1)] == ["far"]
    assert m.high_tension_items(qs, "A", "Z", 5) == []


def test_closer_to():
    a, b = [0.9, 0.1, 0.0], [0.0, 0.1, 0.9]
    assert m.closer_to([0.8, 0.2, 0.0], a, b) == "a"
    assert m.closer_to([0.0, 0.3, 0.7], a, b) == "b"
    assert m.closer_to([0.45, 0.1, 0.45], a, b) == "tie"


# --------------------------------------------------------------------------- ALIGN ranking

WORDS = ["dog", "cat", "fish", "bird"]  # human frequency order, best first


def test_parse_ranking_lines_and_commas():
    assert m.parse_ranking("1: Dog\n2. cat\n3) fish\n4: bird", WORDS) == WORDS
    assert m.parse_ranking("fish, bird, cat, dog", WORDS) == ["fish", "bird", "cat", "dog"]


def test_parse_ranking_uses_last_heading_and_drops_outside_words():
    text = ("Let me think. fish, bird come first.\nFinal ranking (draft): bird, fish\n"
            "Hmm.\n**FINAL RANKING**\n1: cat\n2: tree\n3: dog\n4: cat")
    assert m.parse_ranking(text, WORDS) == ["cat", "dog"]


def test_parse_ranking_none_when_no_word_of_the_set():
    assert m.parse_ranking("I cannot answer this.", WORDS) is None
    assert m.parse_ranking("Final Ranking:\n1: tree\n2: house", WORDS) is None


def test_ranking_reward_perfect_and_reversed():
    perfect = "Reasoning...\nFinal Ranking:\n1: dog\n2: cat\n3: fish\n4: bird"
    reverse = "Final Ranking:\n1: bird\n2: fish\n3: cat\n4: dog"
    assert m.spearman_ranking_reward(perfect, WORDS) == pytest.approx(1.0)
    assert m.spearman_ranking_reward(reverse, WORDS) == pytest.approx(-1.0)


def test_ranking_reward_unparseable_is_minus_one():
    assert m.spearman_ranking_reward("no idea", WORDS) == -1.0
    assert m.spearman_ranking_reward("", WORDS) == -1.0


def test_ranking_reward_reads_final_section_after_reasoning():
    # the reasoning lists the words in reversed order; only the final section must count
    text = "bird, fish, cat, dog seem plausible.\nbird\nfish\ncat\ndog\nFinal Ranking:\n1: dog\n2: cat\n3: bird\n4: fish"
    expected = spearmanr([1, 2, 3, 4], [1, 2, 4, 3]).statistic
    assert m.spearman_ranking_reward(text, WORDS) == pytest.approx(expected)
    assert expected == pytest.approx(0.8)


def test_ranking_reward_chinese_heading():
    human = ["猫", "狗", "鱼"]
    text = "我认为狗比较常见。\n最终排名：\n1: 猫\n2: 鱼\n3: 狗"
    expected = spearmanr([1, 2, 3], [1, 3, 2]).statistic
    assert m.spearman_ranking_reward(text, human) == pytest.approx(expected)
    assert expected == pytest.approx(0.5)


def test_ranking_reward_missing_words_take_rank_n_plus_one():
    # model ranks only cat, dog: dog->2, cat->1, fish->5, bird->5 (n=4, worst rank n+1)
    text = "Final Ranking:\n1: cat\n2: dog\n3: tree"
    expected = spearmanr([1, 2, 3, 4], [2, 1, 5, 5]).statistic
    assert m.spearman_ranking_reward(text, WORDS) == pytest.approx(expected)


def test_ranking_reward_undefined_rho_is_minus_one():
    # one human word: every rank vector is constant -> rho undefined
    assert m.spearman_ranking_reward("Final Ranking:\n1: dog", ["dog"]) == -1.0


# --------------------------------------------------------------------------- classification


def test_accuracy():
    assert m.accuracy(["a", "b", "c", "a"], ["a", "b", "a", "a"]) == pytest.approx(0.75)


def test_macro_f1_three_classes_hand_computed():
    y_true = ["a", "a", "a", "b", "b", "c"]
    y_pred = ["a", "a", "b", "b", "c", "c"]
    # a: tp=2 fp=0 fn=1 -> P=1,   R=2/3 -> F1=0.8
    # b: tp=1 fp=1 fn=1 -> P=1/2, R=1/2 -> F1=0.5
    # c: tp=1 fp=1 fn=0 -> P=1/2, R=1   -> F1=2/3
    assert m.macro_f1(y_true, y_pred) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_macro_f1_union_of_labels_and_explicit_labels():
    # "d" is only predicted: it counts as a class with F1 0 (sklearn's union semantics)
    y_true, y_pred = ["a", "b"], ["a", "d"]
    assert m.macro_f1(y_true, y_pred) == pytest.approx((1.0 + 0.0 + 0.0) / 3)
    # explicit labels: only "a" and "b" averaged; an absent label "z" scores 0
    assert m.macro_f1(y_true, y_pred, labels=["a", "b"]) == pytest.approx(0.5)
    assert m.macro_f1(y_true, y_pred, labels=["a", "z"]) == pytest.approx(0.5)


@pytest.mark.parametrize("fn", [m.accuracy, m.macro_f1])
def test_classification_rejects_empty_and_mismatch(fn):
    with pytest.raises(ValueError):
        fn([], [])
    with pytest.raises(ValueError):
        fn(["a", "b"], ["a"])


# --------------------------------------------------------------------------- lexical norms


def test_lexical_norms():
    lexicon = {
        "cat": {"valence": 7.0, "arousal": 4.0, "concreteness": 4.9},
        "war": {"valence": 1.5, "arousal": 7.0},
        "joy": {"valence": 8.0, "arousal": 6.0, "dominance": 6.5},
    }
    out = m.lexical_norms([" Cat", "war", "JOY", "zzz"], lexicon)
    assert out["median_valence"] == pytest.approx(7.0)
    assert out["median_arousal"] == pytest.approx(6.0)
    assert out["median_dominance"] == pytest.approx(6.5)
    assert out["median_concreteness"] == pytest.approx(4.9)
    assert out["coverage"] == pytest.approx(0.75)
    assert out["n_words"] == 4


def test_lexical_norms_no_words_and_missing_key():
    out = m.lexical_norms([], {"cat": {"valence": 7.0}})
    assert out["coverage"] == 0.0 and out["n_words"] == 0
    assert out["median_valence"] is None
    out = m.lexical_norms(["cat", "dog"], {"cat": {"valence": 7.0}, "dog": {"valence": 5.0}})
    assert out["median_valence"] == pytest.approx(6.0)
    assert out["median_concreteness"] is None
    assert np.isclose(out["coverage"], 1.0)


def test_length_summary_reports_the_spread_and_the_answers_cut_at_the_limit():
    from culture_rl.eval.metrics import length_summary

    lengths = [3, 40, 12, 40, 5, 7, 9, 11, 2, 8]  # two reached max_new_tokens = 40
    summary = length_summary(lengths, limit=40)
    assert summary == {"median": 8.5, "p90": 40.0, "max": 40.0, "at_limit_share": 0.2}
    assert length_summary(list(range(1, 11)))["p90"] == 9.0  # nearest rank: the 9th of 10
    assert "at_limit_share" not in length_summary([1, 2]) and length_summary([]) == {}
