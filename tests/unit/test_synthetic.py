import pytest

from culture_rl.config import WorldConfig
from culture_rl.data.surveys import load_survey
from culture_rl.data.swow import load_swow
from culture_rl.data.lexicons import load_warriner
from culture_rl.data.synthetic import generate_world
from culture_rl.eval.metrics import js_distance

SMALL = WorldConfig(num_cues=24, num_survey_questions=8, participants_per_cue=30)


def test_same_seed_same_world_other_seed_other_world():
    a, b = generate_world(SMALL), generate_world(SMALL)
    assert a.norms == b.norms and a.corpus == b.corpus and a.survey == b.survey
    c = generate_world(SMALL.model_copy(update={"seed": 8}))
    assert c.norms != a.norms


def test_cultures_share_some_associations_and_differ_on_others():
    world = generate_world(SMALL)
    first, second = world.cultures[0].name, world.cultures[1].name
    for cue in world.cues:
        top_a = {w for w, _ in world.norms[first][cue][:5]}
        top_b = {w for w, _ in world.norms[second][cue][:5]}
        assert top_a != top_b
        all_a = {w for w, _ in world.norms[first][cue]}
        all_b = {w for w, _ in world.norms[second][cue]}
        assert all_a & all_b


def test_survey_distributions_differ_between_cultures():
    world = generate_world(SMALL)
    names = [c.name for c in world.cultures]
    gaps = [js_distance(q.distributions[names[0]], q.distributions[names[1]])
            for q in world.survey]
    assert max(gaps) > 0.1


def test_base_corpus_is_dominated_by_culture_zero():
    world = generate_world(SMALL)
    dominant = world.cultures[0].name
    untagged = [d for d in world.corpus if d.startswith("Cue:")]
    assert len(untagged) == SMALL.num_cues * SMALL.base_docs_per_cue
    for doc in untagged:  # every untagged answer is the dominant culture's
        cue = doc.split("\n", 1)[0].removeprefix("Cue: ")
        answer = doc.rsplit("Answer: ", 1)[1].split(", ")
        assert set(answer) <= {w for w, _ in world.norms[dominant][cue]}
    per_culture = [sum(d.startswith(f"You are a person from {c.name}.\nCue:")
                       for d in world.corpus) for c in world.cultures]
    assert len(set(per_culture)) == 1 and per_culture[0] < len(untagged)


def test_written_files_load_through_the_real_loaders(tmp_path):
    world = generate_world(SMALL)
    paths = world.write(tmp_path)
    culture = world.cultures[1].name
    assert load_swow(paths[f"swow_{culture}"]) == world.norms[culture]
    raw = load_swow(paths["swow_raw"], country=culture, native_language=culture + "ish")
    assert raw == world.norms[culture]
    survey = load_survey(paths["survey_jsonl"])
    assert [q.id for q in survey] == [q.id for q in world.survey]
    assert len(load_survey(paths["survey_goqa"])) == len(world.survey)
    assert len(load_warriner(paths["warriner"])) > 0


@pytest.mark.parametrize("vocabulary", ["invented", "english"])
def test_held_out_cues_share_topic_words_with_training_cues(vocabulary):
    # The English world keeps the structure: a culture's preferences carry to held-out cues.
    world = generate_world(SMALL.model_copy(update={"vocabulary": vocabulary, "num_topics": 6}))
    culture = world.cultures[1].name
    from culture_rl.data.examples import split_cues

    split = split_cues(world.cues)
    train_words = {w for c in split["train"] for w, _ in world.norms[culture][c]}
    for cue in split["test"]:
        top = [w for w, _ in world.norms[culture][cue][:5]]
        assert sum(w in train_words for w in top) >= 3


def test_questionnaires_list_a_topics_questions_in_the_generation_format():
    from culture_rl.methods.culturespa.questions import parse_question

    several = SMALL.model_copy(update={"num_survey_questions": 30})  # 2-3 per topic area
    plain = generate_world(several)
    world = generate_world(several.model_copy(update={"questionnaire_docs_per_topic": 3}))
    questionnaires = [d for d in world.corpus if d.startswith("Survey questions about ")]
    topics = {q.topic for q in world.survey}
    with_two = [t for t in topics if sum(q.topic == t for q in world.survey) >= 2]
    assert len(questionnaires) == 3 * len(with_two) and with_two
    assert sorted(set(world.corpus) - set(questionnaires)) == sorted(set(plain.corpus))
    by_text = {q.question: q for q in world.survey}
    for doc in questionnaires:
        topic = doc.split("\n", 1)[0].removeprefix("Survey questions about ").rstrip(".")
        items = doc.split("Question:")[1:]
        assert 2 <= len(items) <= 3 and "Answer:" not in doc
        for item in items:  # each item reads back as a question of that topic, options in order
            parsed = parse_question(topic, item).question
            assert parsed is not None and by_text[parsed.question].topic == topic
            assert parsed.options == by_text[parsed.question].options


def _tagged_survey_pairs(world) -> set[tuple[str, str]]:
    """(question text, culture) of every culture-tagged survey answer in the corpus, direct or
    CCoT."""
    pairs = set()
    for doc in world.corpus:
        if doc.startswith("You are a person from ") and "\nOptions:\n" in doc:
            culture = doc.removeprefix("You are a person from ").split(".\n", 1)[0]
            pairs.add((doc.split("Question: ", 1)[1].split("\n", 1)[0], culture))
    return pairs


def test_withheld_pairs_get_no_tagged_answer_and_the_rest_keep_theirs():
    from culture_rl.data.world_corpus import withheld_survey_pairs

    config = SMALL.model_copy(update={"withheld_survey_share": 0.5, "ccot_docs_per_question": 1})
    world = generate_world(config)
    withheld = withheld_survey_pairs(config, world.cultures, world.survey)
    others = [(q.id, c.name) for q in world.survey for c in world.cultures[1:]]
    assert len(withheld) == round(0.5 * len(others)) and withheld < set(others)
    text = {q.id: q.question for q in world.survey}
    tagged = _tagged_survey_pairs(world)
    every = {(text[q.id], c.name) for q in world.survey for c in world.cultures}
    assert tagged == every - {(text[q], c) for q, c in withheld}
    # the dominant culture keeps all its answers, and nothing is withheld by default
    assert not withheld_survey_pairs(SMALL, world.cultures, world.survey)


def test_ccot_documents_state_the_cultures_stance_on_the_questions_value():
    config = SMALL.model_copy(update={"ccot_docs_per_question": 2})
    plain, world = generate_world(SMALL), generate_world(config)
    ccot = [d for d in world.corpus if "\nThoughts:" in d]
    assert len(ccot) == 2 * len(world.survey) * len(world.cultures)
    assert sorted(set(world.corpus) - set(ccot)) == sorted(set(plain.corpus))
    values = {c.name: dict(zip(world.value_dimensions, c.values)) for c in world.cultures}
    stances = ["hold {} very dear", "value {}", "are divided on {}", "care little for {}",
               "reject {}"]
    for doc in ccot:
        culture = doc.removeprefix("You are a person from ").split(".\n", 1)[0]
        thought = doc.split("Thoughts: ", 1)[1].split("\n", 1)[0]
        assert thought.startswith(f"People from {culture} ") and thought.endswith(".")
        stance = thought.removeprefix(f"People from {culture} ").removesuffix(".")
        level, dim = next((i, d) for i, s in enumerate(stances) for d in world.value_dimensions
                          if s.format(d) == stance)
        # the stances order the culture's values: more for a value, an earlier stance
        value = values[culture][dim]
        assert {0: value >= 0.8, 1: 0.25 <= value < 0.8, 2: -0.25 <= value < 0.25,
                3: -0.8 <= value < -0.25, 4: value < -0.8}[level]
        assert doc.rsplit("Answer:", 1)[1] in {" 1", " 2", " 3", " 4", " 5"}


def test_ccot_communities_answer_in_ccot_only_and_leave_the_rest_unchanged():
    config = SMALL.model_copy(update={"ccot_communities": 5})
    plain, world = generate_world(SMALL), generate_world(config)
    added = sorted(set(world.corpus) - set(plain.corpus))
    assert set(plain.corpus) <= set(world.corpus)
    assert len(world.corpus) - len(plain.corpus) == 5 * len(world.survey)
    communities = {d.removeprefix("You are a person from ").split(".\n", 1)[0] for d in added}
    assert len(communities) == 5 and not communities & {c.name for c in world.cultures}
    assert all("\nThoughts: People from " in d for d in added)
    assert world.survey == plain.survey  # the communities are not evaluated
