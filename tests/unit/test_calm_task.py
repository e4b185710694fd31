"""The culture-dependent value-identification task (culture_rl/data/value_tasks.py) and its
wiring into the CALM workflow (calm.task)."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from culture_rl.data import value_tasks
from culture_rl.data.synthetic import generate_world
from culture_rl.data.value_tasks import culture_dependent_statements, value_reading
from culture_rl.core.errors import ConfigError


@pytest.fixture(scope="module")
def world():
    return generate_world()


@pytest.fixture(scope="module")
def rows(world):
    return culture_dependent_statements(world, seed=3)


def split(rows, name):
    return [r for r in rows if r["split"] == name]


def test_deterministic_by_seed(world, rows):
    assert culture_dependent_statements(world, seed=3) == rows
    other = culture_dependent_statements(world, seed=4)
    assert [r["text"] for r in other] != [r["text"] for r in rows]
    assert len({r["id"] for r in rows}) == len(rows)


def test_sizes_and_balanced_labels(world):
    clean = culture_dependent_statements(world, seed=3, label_noise=0.0)
    dims, cultures = world.value_dimensions, [c.name for c in world.cultures]
    # 6 acts x 4 groups x 3 cultures; 2 of each group's acts unseen per culture.
    assert Counter(r["subset"] for r in clean) == {"train": 16 * 6 * 3, "seen": 16 * 3,
                                                    "unseen": 8 * 2 * 3}
    for part in ("train", "seen", "unseen"):
        counts = Counter((r["culture"], r["label"]) for r in clean if r["subset"] == part)
        assert set(counts) == {(c, d) for c in cultures for d in dims}
        assert len(set(counts.values())) == 1, (part, counts)


def test_meaning_follows_each_cultures_value_ranking(world, rows):
    readings = {c.name: value_reading(c.values, world.value_dimensions) for c in world.cultures}
    for r in split(rows, "heldout"):
        assert r["label"] == readings[r["culture"]][r["group"]]
    # Avalor ranks autonomy first, Borenia achievement: the same act, another value.
    assert readings["Avalor"][0] == "autonomy" and readings["Borenia"][0] == "achievement"
    by_act = {}
    for r in split(rows, "heldout"):
        by_act.setdefault(r["act"], set()).add(r["label"])
    assert all(len(labels) >= 2 for labels in by_act.values())
    assert value_reading([0.0, 2.0, -1.0], ["a", "b", "c"]) == ["b", "a", "c"]


def test_unseen_pairs_are_never_trained_and_each_act_is_unseen_in_one_culture(world, rows):
    trained = {(r["culture"], r["act"]) for r in split(rows, "train")}
    unseen = {(r["culture"], r["act"]) for r in rows if r["subset"] == "unseen"}
    seen = {(r["culture"], r["act"]) for r in rows if r["subset"] == "seen"}
    assert unseen and not unseen & trained and seen == trained
    assert Counter(act for _, act in unseen) == {act: 1 for _, act in unseen}
    cultures = {c.name for c in world.cultures}
    for culture, act in unseen:  # trained in every other culture
        assert {c for c, a in trained if a == act} == cultures - {culture}


def wording(text: str, row: dict, world) -> str:
    """The text without the culture, the act, its kind and cue words: the wording."""
    names = {c.name for c in world.cultures} | set(world.cues) | {row["act"], row["kind"]}
    return " ".join(w for w in re.findall(r"[A-Za-z]+", text) if w not in names)


def test_held_out_wording_is_disjoint_from_training(world, rows):
    train = {wording(r["text"], r, world) for r in split(rows, "train")}
    held = {wording(r["text"], r, world) for r in split(rows, "heldout")}
    assert train and held and not train & held
    train_words = {w for t in train for w in t.split()}
    for verb in value_tasks.HELDOUT_VERBS:
        assert verb not in train_words
    assert any("customs" in r["text"] for r in split(rows, "heldout"))  # distractors present
    assert all(r["kind"] in r["text"] and r["act"] in r["text"] and r["culture"] in r["text"]
               for r in rows)


def test_label_noise_only_on_training_labels(world):
    clean = culture_dependent_statements(world, seed=3, label_noise=0.0)
    noisy = culture_dependent_statements(world, seed=3, label_noise=0.3)
    readings = {c.name: value_reading(c.values, world.value_dimensions) for c in world.cultures}
    flipped = [r for r in split(noisy, "train") if r["label"] != readings[r["culture"]][r["group"]]]
    assert 0.2 < len(flipped) / len(split(noisy, "train")) < 0.4
    assert all(r["label"] == readings[r["culture"]][r["group"]] for r in split(clean, "train"))
    assert all(r["label"] == readings[r["culture"]][r["group"]] for r in split(noisy, "heldout"))


def test_too_small_settings_are_refused(world):
    with pytest.raises(ValueError, match="acts_per_value"):
        culture_dependent_statements(world, acts_per_value=5, unseen_per_culture=2)
    with pytest.raises(ValueError, match="acts_per_value"):
        culture_dependent_statements(world, acts_per_value=200, unseen_per_culture=0)


def test_workflow_keeps_the_tasks_split_and_subsets():
    from culture_rl.config import load_config
    from culture_rl.data.align_data import load_align_data
    from culture_rl.methods.calm.train import build_calm_job

    config = load_config(None, ["calm.task.name=culture_dependent", "calm.task.seed=5"])
    data = load_align_data(config, write_world=False)
    job = build_calm_job(config, data, model_path="unused")
    assert len(job.train_rows) == 288 and len(job.eval_rows) == 96
    assert Counter(r["subset"] for r in job.eval_rows) == {"seen": 48, "unseen": 48}
    assert not {r["text"] for r in job.train_rows} & {r["text"] for r in job.eval_rows}
    assert job.label_names == sorted(data.world.value_dimensions)
    # The other task is unchanged: the world's statements, split by eval_fraction.
    plain = build_calm_job(load_config(None, []), data, model_path="unused")
    assert len(plain.eval_rows) == 72 and "subset" not in plain.eval_rows[0]


def test_workflow_errors_name_the_field(tmp_path):
    from culture_rl.config import load_config
    from culture_rl.data.align_data import load_align_data
    from culture_rl.methods.calm.train import build_calm_job

    config = load_config(None, ["calm.task.name=culture_dependent",
                                "calm.task.acts_per_value=2"])
    data = load_align_data(config, write_world=False)
    with pytest.raises(ConfigError, match="acts_per_value") as error:
        build_calm_job(config, data, model_path="unused")
    assert error.value.field == "calm.task.acts_per_value"
    path = tmp_path / "s.jsonl"
    path.write_text('{"text": "a", "label": "x", "culture": "A"}\n'
                    '{"text": "b", "label": "y", "culture": "B"}\n', "utf-8")
    config = load_config(None, ["calm.task.name=culture_dependent",
                                f"data.statements_path={path}"])
    with pytest.raises(ConfigError) as error:
        build_calm_job(config, data, model_path="unused")
    assert error.value.field == "calm.task.name"


def test_scores_and_report_by_subset():
    from culture_rl.train.calm_loop import classification_scores
    from culture_rl.methods.calm.train import render_report

    scores = classification_scores(["x", "y", "x", "y"], ["x", "y", "y", "y"],
                                   ["A", "A", "B", "B"], ["x", "y"],
                                   ["seen", "seen", "unseen", "unseen"])
    assert scores["by_subset"]["seen"]["accuracy"] == 1.0
    assert scores["by_subset"]["unseen"]["accuracy"] == 0.5
    assert "by_subset" not in classification_scores(["x"], ["x"], ["A"], ["x", "y"])
    results = {"labels": ["x", "y"], "cultures": ["A", "B"], "n_heldout": 4,
               "eval_fraction": 0.2, "seed": 1, "task": "culture_dependent",
               "models": {"calm": {**scores, "steps": 3}}}
    text = render_report(results)
    assert "acc seen | F1 seen | acc unseen | F1 unseen" in text
    assert "| calm | 3 | 0.750 | 0.733 | 1.000 | 1.000 | 0.500 | 0.333 |" in text
