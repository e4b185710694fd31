import random

from culture_rl.data import examples, prompts


NORMS = {f"cue{i}": [(f"w{i}_{j}", 100 - j) for j in range(12)] for i in range(50)}


def test_split_is_70_20_10_deterministic_and_order_free():
    cues = list(NORMS)
    split = examples.split_cues(cues)
    assert [len(split[s]) for s in ("train", "val", "test")] == [35, 10, 5]
    assert split == examples.split_cues(list(reversed(cues)))
    assert set().union(*split.values()) == set(cues)
    assert examples.split_cues(cues, seed=1) != split


def test_resample_keeps_frequency_order():
    pairs = NORMS["cue0"]
    words = examples.resample_associations(pairs, 0.7, random.Random(0))
    assert len(words) == round(0.7 * 12)
    order = [w for w, _ in pairs]
    assert [order.index(w) for w in words] == sorted(order.index(w) for w in words)


def test_sft_examples_ask_for_the_list():
    rows = examples.build_sft_examples(NORMS, ["cue1", "cue2", "missing"], examples_per_cue=3,
                                       max_associations=5)
    assert len(rows) == 6
    assert rows[0]["prompt"] == prompts.association_prompt("cue1")
    listed = rows[0]["completion"].strip().split(", ")
    assert 1 <= len(listed) <= 5 and set(listed) <= {w for w, _ in NORMS["cue1"]}
    assert examples.build_sft_examples(NORMS, ["cue1"], examples_per_cue=3,
                                       max_associations=5) == rows[:3]


def test_chinese_template():
    rows = examples.build_sft_examples({"猫": [("狗", 3), ("鱼", 2)]}, ["猫"], language="zh",
                                       fraction=1.0, examples_per_cue=1)
    assert "猫" in rows[0]["prompt"] and rows[0]["completion"] == " 狗，鱼"


def test_ranking_examples_target_is_human_order():
    rows = examples.build_ranking_examples(NORMS, ["cue3"], n_words=10)
    (row,) = rows
    assert sorted(row["words"]) == sorted(row["human_order"])
    counts = dict(NORMS["cue3"])
    assert [counts[w] for w in row["human_order"]] == sorted(
        (counts[w] for w in row["human_order"]), reverse=True)
    assert examples.build_ranking_examples({"few": [("a", 1)]}, ["few"]) == []
