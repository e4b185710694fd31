"""Pure helpers of CALM training: the per-culture sampler, the split, the data rows, variants."""

from __future__ import annotations

from collections import Counter

import pytest

from culture_rl.config.calm import CalmConfig
from culture_rl.core.errors import ConfigError
from culture_rl.train.calm import variant_config
from culture_rl.train.calm_data import (per_culture_batches, rank_batches, split_statements,
                                        steps_per_epoch)
from culture_rl.train.calm_loop import classification_scores, learning_rate_factor
from culture_rl.methods.calm.train import build_calm_rows, render_report


def statements(cultures=("A", "B", "C"), labels=("x", "y"), per=10):
    return [{"id": f"{c}-{l}-{i}", "text": f"{c} {l} {i}", "label": l, "culture": c}
            for c in cultures for l in labels for i in range(per)]


def test_every_micro_batch_holds_per_culture_samples_of_each_culture():
    culture_ids = [0] * 20 + [1] * 13 + [2] * 30
    batches = per_culture_batches(culture_ids, 4, seed=1, epoch=0)
    assert len(batches) == 13 // 4
    for batch in batches:
        assert Counter(culture_ids[i] for i in batch) == {0: 4, 1: 4, 2: 4}
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat))  # no row twice in an epoch


def test_batch_order_is_a_function_of_seed_and_epoch():
    ids = [i % 3 for i in range(60)]
    assert per_culture_batches(ids, 2, 5, 3) == per_culture_batches(ids, 2, 5, 3)
    assert per_culture_batches(ids, 2, 5, 3) != per_culture_batches(ids, 2, 5, 4)
    assert per_culture_batches(ids, 2, 5, 3) != per_culture_batches(ids, 2, 6, 3)


def test_rank_batches_are_disjoint_and_equal_in_number():
    batches = [[i] for i in range(7)]
    shares = [rank_batches(batches, r, 2) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == 3
    assert not set(map(tuple, shares[0])) & set(map(tuple, shares[1]))
    assert steps_per_epoch([20, 13, 30], 4, 2, 1) == 1
    assert steps_per_epoch([96, 96, 96], 4, 2, 1) == 12


def test_split_is_seeded_stratified_and_disjoint():
    rows = statements()
    train, held = split_statements(rows, 0.2, 42)
    assert len(held) == 12 and len(train) == 48
    assert Counter((s["culture"], s["label"]) for s in held) == {
        (c, l): 2 for c in "ABC" for l in "xy"}
    assert not {s["id"] for s in train} & {s["id"] for s in held}
    assert split_statements(rows, 0.2, 42) == (train, held)
    assert split_statements(rows, 0.2, 43)[1] != held


def test_build_rows_ids_by_sorted_name_and_bad_data():
    train, held, labels, cultures = build_calm_rows(statements(), 0.2, 0)
    assert labels == ["x", "y"] and cultures == ["A", "B", "C"]
    assert all(r["label_id"] == labels.index(r["label"]) and
               r["culture_id"] == cultures.index(r["culture"]) for r in train + held)
    with pytest.raises(ConfigError):
        build_calm_rows(statements(cultures=("A",)), 0.2, 0)
    with pytest.raises(ConfigError):
        build_calm_rows(statements(labels=("x",)), 0.2, 0)


def test_variants_switch_modules_off():
    calm = CalmConfig()
    base = variant_config(calm, "baseline")
    assert not any(getattr(base, m).enabled for m in
                   ("disentangle", "contrastive", "prototypes", "cross_attention", "moe",
                    "fusion"))
    assert base.heads.classification
    no_moe = variant_config(calm, "no_moe")
    assert not no_moe.moe.enabled and no_moe.fusion.enabled and no_moe.disentangle.enabled
    assert variant_config(calm, "calm") is calm
    with pytest.raises(ValueError):
        variant_config(calm, "nothing")


def test_learning_rate_schedule():
    assert learning_rate_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert learning_rate_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert learning_rate_factor(99, 100, 10, "cosine") < 0.01
    assert learning_rate_factor(55, 100, 0, "constant") == 1.0
    assert learning_rate_factor(50, 100, 0, "linear") == pytest.approx(0.5)


def test_scores_and_report():
    scores = classification_scores(["x", "y", "x", "y"], ["x", "y", "y", "y"],
                                   ["A", "A", "B", "B"], ["x", "y"])
    assert scores["accuracy"] == 0.75
    assert scores["by_culture"]["A"]["accuracy"] == 1.0
    assert scores["by_culture"]["B"]["accuracy"] == 0.5
    results = {"labels": ["x", "y"], "cultures": ["A", "B"], "n_heldout": 4,
               "eval_fraction": 0.2, "seed": 1,
               "models": {"calm": {**scores, "steps": 3, "routing": {"A": [0.5, 0.5],
                                                                      "B": [1.0, 0.0]}},
                          "baseline": {**scores, "steps": 3}},
               "loss_terms": {"loss": [2.0, 1.0]}}
    text = render_report(results)
    assert "| calm | 3 | 0.750 |" in text and "| baseline |" in text and "| A | 0.500" in text


def test_report_shows_learning_curves():
    scores = {"accuracy": 1.0, "macro_f1": 1.0, "n": 2, "by_culture": {},
              "curve": [[2, 0.5, 0.4], [4, 1.0, 1.0]]}
    results = {"labels": ["x", "y"], "cultures": [], "n_heldout": 2, "eval_fraction": 0.2,
               "seed": 1, "models": {"calm": scores, "baseline": {**scores, "curve": [[2, 0.25,
                                                                                      0.2]]}}}
    text = render_report(results)
    assert "| model | 2 | 4 |" in text
    assert "| calm | 0.50 | 1.00 |" in text and "| baseline | 0.25 |  |" in text


def test_zero3_with_two_gradient_passes_is_refused_before_ray():
    from culture_rl.config import load_config
    from culture_rl.data.align_data import load_align_data
    from culture_rl.methods.calm.train import build_calm_job

    config = load_config(None, ["deepspeed.zero_stage=3", "model.path=/nonexistent"])
    data = load_align_data(config, write_world=False)
    with pytest.raises(ConfigError, match="features_grad"):
        build_calm_job(config, data, model_path="unused")
    config = load_config(None, ["deepspeed.zero_stage=3", "calm.features_grad=false"])
    job = build_calm_job(config, data, model_path="unused")
    assert job.deepspeed.zero_stage == 3 and len(job.eval_rows) == 72


def test_statement_rows_of_a_chat_model_read_and_learn_only_the_statements_tokens():
    from culture_rl.models.loading import train_tokenizer
    from culture_rl.train.calm_data import IGNORE, CalmRows

    texts = ["Elders in Avalor say festivals bind us.", "Neighbours in Borenia say change is good."]
    rows = [{"text": t, "label_id": i, "culture_id": i} for i, t in enumerate(texts)]
    raw = train_tokenizer(texts * 20, 300)
    raw.pad_token = raw.eos_token = raw.unk_token or "<unk>"
    plain = CalmRows(raw, rows, 64, lm=True).batch([0, 1])
    assert "identity_mask" not in plain  # no template: every token read, as before
    assert _labels_are_ids_where(plain["labels"], plain["input_ids"], plain["attention_mask"])

    chat = train_tokenizer(texts * 20, 300)
    chat.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    chat.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                          "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>"
                          "assistant\n{% endif %}")
    chat.pad_token = chat.eos_token = "<|im_end|>"
    batch = CalmRows(chat, rows, 64, lm=True).batch([0, 1])
    read, labels, ids = batch["identity_mask"], batch["labels"], batch["input_ids"]
    for i, text in enumerate(texts):
        assert chat.decode(ids[i][read[i].bool()]).replace(" ", "") == text.replace(" ", "")
        assert ((labels[i] != IGNORE) == read[i].bool()).all()  # LM loss on the statement only
        assert chat.decode(ids[i][batch["attention_mask"][i].bool()]).startswith("<|im_start|>user")


def _labels_are_ids_where(labels, ids, mask):
    return bool((labels[mask.bool()] == ids[mask.bool()]).all())
