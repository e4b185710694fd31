"""CultureSPA's pure parts: question parsing, the culture-related detector, training rows for
joint and specific tuning, and per-culture adapter sets routed by request (on a tiny Llama with
two real LoRA adapters)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from culture_rl.data import prompts
from culture_rl.eval.metrics import js_distance
from culture_rl.methods.culturespa.instances import (answer_labels, culture_related,
                                                     proportional_counts, related_instances,
                                                     target_distribution, training_rows)
from culture_rl.methods.culturespa.questions import (QUESTION_FORMS, collect, continuation_prompt,
                                                     parse_json_question, parse_question,
                                                     question_form)

GOOD = (" On trust: most people can be trusted (item 3).\nOptions:\n1. Strongly agree\n"
        "2. Agree\n3. Disagree\nAnswer: 2")


def test_parse_a_good_generation():
    result = parse_question("trust", GOOD)
    assert result.reason is None
    assert result.question.question == "On trust: most people can be trusted (item 3)."
    assert result.question.options == ("Strongly agree", "Agree", "Disagree")


@pytest.mark.parametrize("completion, reason", [
    ("", "no question text"),
    ("\n1. yes\n2. no", "no question text"),
    (" Is it good?\nOptions:\n1. yes\nAnswer: 1", "fewer than two options"),
    (" Is it good?\nOptions:\n1. yes\n3. no", "options out of order"),
    (" Is it good?\nOptions:\n1. yes\n2. Yes!", "repeated option"),
    (" Is it good?\nOptions:\n" + "\n".join(f"{i}. o{i}" for i in range(1, 13)),
     "too many options"),
    (" Is it good? no options at all", "fewer than two options"),
])
def test_malformed_generations_are_dropped_with_a_reason(completion, reason):
    result = parse_question("t", completion)
    assert result.question is None and result.reason == reason


def test_options_stop_at_the_answer_or_next_question():
    text = " Q one?\nOptions:\n1. a\n2. b\nAnswer: 1\n3. c"
    assert parse_question("t", text).question.options == ("a", "b")
    text = " Q one?\n1. a\n2. b\n\n3. c"
    assert parse_question("t", text).question.options == ("a", "b")


def test_collect_deduplicates_and_counts():
    pairs = [("t", GOOD), ("t", GOOD.replace("(item 3).", "(item 3)!")), ("t", " Seed q?\n1. a\n2. b"),
             ("t", " New q?\n1. a\n2. b"), ("t", " Bad\n1. a")]
    kept, dropped = collect(pairs, seen=["seed Q"])
    assert [q.question for q in kept] == ["On trust: most people can be trusted (item 3).",
                                          "New q?"]
    assert dropped == {"duplicate": 2, "fewer than two options": 1}


def test_generation_prompt_shows_the_examples_and_ends_at_the_heading():
    prompt = continuation_prompt("trust", [("Q1?", ["a", "b"]), ("Q2?", ["c", "d"])])
    assert prompt.endswith("Question:") and "Q1?" in prompt and "2. d" in prompt
    assert "trust" in continuation_prompt("trust", [], "zh")


@pytest.mark.parametrize("language", ["en", "zh"])
def test_the_instruction_asks_a_social_scientist_for_json(language):
    prompt = prompts.question_request("Migration", [("Q1?", ["a", "b"]), ("问题二？", ["是", "否"])],
                                      language)
    role, request = prompts.split_preamble(prompt)
    # The role is the chat model's system message; the request its user turn.
    assert role is not None and "\n" not in role and not request.startswith(role)
    assert request.count("Migration") == 2 and '"Options"' in request
    assert '["a", "b"]' in request and '["是", "否"]' in request  # JSON lists, CJK unescaped
    assert "Q1?" in request and "问题二？" in request


@pytest.mark.parametrize("completion, question, options", [
    ('{"Question": "Is work important?", "Options": ["Very", "Rather", "Not"]}',
     "Is work important?", ("Very", "Rather", "Not")),
    ('Sure! ```json\n{"question": "How often  do you pray?",\n "options": ["Daily", "Never"]}'
     '\n```', "How often do you pray?", ("Daily", "Never")),
    ('{"QUESTION": "你信任邻居吗？", "Options": ["信任", "不信任", 3]}', "你信任邻居吗？",
     ("信任", "不信任", "3")),
    # the examples' labelled form, which SmolLM2-135M-Instruct copies instead of the JSON
    ('#Example 3:\nQuestion: Do you vote?\nOptions: ["Always", "Never"]\n#Example 4:',
     "Do you vote?", ("Always", "Never")),
    ("问题：你常去寺庙吗？\n选项：[\"常去\", \"不去\"]", "你常去寺庙吗？", ("常去", "不去")),
])
def test_json_questions_parse(completion, question, options):
    result = parse_json_question("t", completion)
    assert result.reason is None, result.reason
    assert (result.question.question, result.question.options) == (question, options)


@pytest.mark.parametrize("completion, reason", [
    ("Question: Is it good?\n1. yes\n2. no", "not JSON"),
    ('{"Question": "Is it good?", "Options": ["yes", "no"]', "not JSON"),  # cut at the limit
    ('["yes", "no"]', "not JSON"),
    ("Question: Is it good?\nOptions: [yes, no]", "not JSON"),  # the list is not JSON
    ('{"Question": "", "Options": ["yes", "no"]}', "no question text"),
    ('{"Question": "Good?", "Options": "yes or no"}', "fewer than two options"),
    ('{"Question": "Good?", "Options": ["yes"]}', "fewer than two options"),
    ('{"Question": "Good?", "Options": ["Yes", "yes!"]}', "repeated option"),
])
def test_malformed_json_questions_are_dropped_with_a_reason(completion, reason):
    result = parse_json_question("t", completion)
    assert result.question is None and result.reason == reason


def test_the_question_form_follows_the_chat_template():
    assert question_form("auto", True) == "instruction"
    assert question_form("auto", False) == "continuation"
    assert question_form("continuation", True) == "continuation"
    completion = '{"Question": "New q?", "Options": ["a", "b"]}'
    kept, dropped = collect([("t", completion), ("t", completion)], form="instruction")
    assert [q.question for q in kept] == ["New q?"] and dropped == {"duplicate": 1}
    assert set(QUESTION_FORMS) == {"continuation", "instruction"}


def test_culture_related_by_option_or_by_distance():
    assert culture_related([0.6, 0.4], [0.4, 0.6], 0.5)  # another option
    assert not culture_related([0.6, 0.4], [0.55, 0.45], 0.1)  # same option, close
    far = ([0.5, 0.3, 0.2], [0.9, 0.05, 0.05])
    assert js_distance(*far) > 0.2
    assert culture_related(*far, 0.2) and not culture_related(*far, 0.5)


def test_related_instances_and_their_statistics():
    questions = [{"id": "a", "topic": "trust", "question": "Qa?", "options": ["x", "y"]},
                 {"id": "b", "topic": "work", "question": "Qb?", "options": ["x", "y"]}]
    unaware = [[0.7, 0.3], [0.5, 0.5]]
    aware = {"X": [[0.2, 0.8], [0.5, 0.5]], "Y": [[0.7, 0.3], [0.45, 0.55]]}
    instances, stats = related_instances(questions, unaware, aware, js_threshold=0.1)
    assert [(i["id"], i["culture"], i["answer"]) for i in instances] == [("a", "X", 1),
                                                                          ("b", "Y", 1)]
    assert stats["by_culture"] == {"X": {"questions": 2, "related": 1},
                                   "Y": {"questions": 2, "related": 1}}
    assert stats["by_topic"]["trust"] == {"questions": 2, "related": 1}
    assert stats["related"] == 2


INSTANCES = [{"question": "Qa?", "options": ["x", "y"], "culture": "X", "answer": 1,
              "aware": [0.25, 0.75]},
             {"question": "Qb?", "options": ["x", "y", "z"], "culture": "Y", "answer": 0,
              "aware": [1.0, 0.0, 0.0]}]


def test_joint_rows_name_the_culture_in_every_prompt():
    rows = training_rows(INSTANCES, "joint")
    assert list(rows) == ["joint"] and len(rows["joint"]) == 2
    first = rows["joint"][0]
    assert first["prompt"] == prompts.culture_preamble("X") + prompts.survey_prompt("Qa?",
                                                                                    ["x", "y"])
    assert first["completion"] == " 2"


def test_specific_rows_are_split_by_culture_with_or_without_the_preamble():
    rows = training_rows(INSTANCES, "specific", culture_in_prompt=False)
    assert set(rows) == {"X", "Y"}
    assert rows["Y"] == [{"prompt": prompts.survey_prompt("Qb?", ["x", "y", "z"]),
                          "completion": " 1"}]
    named = training_rows(INSTANCES, "specific", culture_in_prompt=True)
    assert named["X"][0]["prompt"].startswith(prompts.culture_preamble("X"))
    with pytest.raises(ValueError):
        training_rows(INSTANCES, "both")


def test_sampled_targets_follow_the_aware_distribution():
    labels = answer_labels(INSTANCES[0], "sampled", 4000, random.Random(0))
    share = Counter(labels)[1] / len(labels)
    assert share == pytest.approx(0.75, abs=0.03)
    assert set(answer_labels(INSTANCES[1], "sampled", 50, random.Random(0))) == {0}
    rows = training_rows(INSTANCES, "joint", target="sampled", samples=8, seed=1)["joint"]
    assert len(rows) == 16
    assert rows == training_rows(INSTANCES, "joint", target="sampled", samples=8,
                                 seed=1)["joint"]  # seeded


def test_target_distribution_sharpens_toward_the_mode():
    aware = [0.5, 0.3, 0.2]
    assert target_distribution(aware) == aware  # temperature 1: as the model gave it
    sharp = target_distribution(aware, temperature=0.5)
    assert sharp == pytest.approx([25 / 38, 9 / 38, 4 / 38])  # aware^2, renormalised
    assert target_distribution(aware, temperature=1e-3)[0] == pytest.approx(1.0)
    flat = target_distribution(aware, temperature=4.0)
    assert max(flat) - min(flat) < max(aware) - min(aware) and sum(flat) == pytest.approx(1)
    assert sum(target_distribution([1.0, 0.0], 0.7)) == pytest.approx(1.0)  # a zero is fine
    with pytest.raises(ValueError):
        target_distribution(aware, temperature=0)


@pytest.mark.parametrize("weights, total, expected", [
    ([0.25, 0.75], 8, [2, 6]),
    ([0.5, 0.3, 0.2], 8, [4, 2, 2]),  # 4, 2.4, 1.6: the largest remainder gets the last row
    ([0.45, 0.45, 0.1], 1, [1, 0, 0]),
    ([1.0, 0.0, 0.0], 5, [5, 0, 0]),
    ([2.0, 2.0], 3, [2, 1]),  # unnormalised weights; ties go to the first option
])
def test_proportional_counts_add_up_and_follow_the_weights(weights, total, expected):
    counts = proportional_counts(weights, total)
    assert counts == expected and sum(counts) == total
    mass = sum(weights)
    assert all(abs(n - total * w / mass) < 1 for n, w in zip(counts, weights))


def test_proportional_and_tempered_targets_in_training_rows():
    labels = answer_labels(INSTANCES[0], "proportional", 8, random.Random(0))
    assert sorted(labels) == [0, 0, 1, 1, 1, 1, 1, 1]  # [0.25, 0.75] of 8
    sharp = answer_labels(INSTANCES[0], "proportional", 8, random.Random(0), temperature=0.5)
    assert Counter(sharp) == {1: 7, 0: 1}  # [0.1, 0.9] of 8
    drawn = answer_labels(INSTANCES[0], "sampled", 4000, random.Random(0), temperature=0.5)
    assert Counter(drawn)[1] / 4000 == pytest.approx(0.9, abs=0.02)
    rows = training_rows(INSTANCES, "joint", target="proportional", samples=8)["joint"]
    assert [r["completion"] for r in rows[:8]].count(" 2") == 6 and len(rows) == 16
    with pytest.raises(ValueError):
        answer_labels(INSTANCES[0], "mode", 8, random.Random(0))


# --------------------------------------------------------------------------- adapter sets


@pytest.fixture(scope="module")
def adapter_set(tmp_path_factory):
    """A tiny Llama and two LoRA adapters with different random weights, as an adapter set."""
    import torch
    from peft import LoraConfig, get_peft_model

    from culture_rl.config import ModelConfig, TinyModelConfig
    from culture_rl.models.loading import build_tiny_model, load_model
    from culture_rl.models.adapters import write_adapter_set

    root = tmp_path_factory.mktemp("adapters")
    shape = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                            vocab_size=300)
    base = build_tiny_model(ModelConfig(tiny=shape), ["Question: Is it good?\nAnswer: 1"] * 40,
                            root / "base", 0)
    folders = {}
    for seed, culture in enumerate(["Avalor", "Borenia"]):
        torch.manual_seed(seed + 10)
        peft = get_peft_model(load_model(base), LoraConfig(r=4, lora_alpha=64,
                                                           target_modules=["q_proj", "v_proj"],
                                                           init_lora_weights=False))
        peft.save_pretrained(root / culture)
        folders[culture] = root / culture
    return write_adapter_set(root / "set", str(base), folders), base, folders


def test_adapter_set_routes_each_request_to_its_cultures_adapter(adapter_set):
    from culture_rl.inference.pools import LocalInference
    from culture_rl.models.loading import load_model, load_tokenizer
    from culture_rl.models.adapters import load_adapter_set

    folder, base, adapters = adapter_set
    tokenizer = load_tokenizer(base)
    routed = LocalInference(load_adapter_set(folder), tokenizer, batch_size=4)
    prompt = "Question: Is it good?\nAnswer:"
    labels = [[" 1", " 2", " 3"]] * 3
    mixed = routed.option_distributions([prompt] * 3, labels,
                                        routes=["Borenia", "Avalor", None])
    singles = {c: LocalInference(load_model(path), tokenizer).option_distributions(
        [prompt], labels[:1])[0] for c, path in adapters.items()}
    plain = LocalInference(load_model(base), tokenizer).option_distributions([prompt],
                                                                             labels[:1])[0]
    assert mixed[0] == pytest.approx(singles["Borenia"], abs=1e-5)
    assert mixed[1] == pytest.approx(singles["Avalor"], abs=1e-5)
    assert mixed[2] == pytest.approx(plain, abs=1e-5)  # no culture: adapters off
    assert singles["Avalor"] != pytest.approx(singles["Borenia"], abs=1e-3)  # they differ
    texts = routed.generate([prompt] * 2, 6, routes=["Avalor", "Borenia"])
    assert texts[0] == LocalInference(load_model(adapters["Avalor"]),
                                      tokenizer).generate([prompt], 6)[0]


def test_adapter_set_names_a_missing_adapter_or_culture(adapter_set, tmp_path):
    import json
    import shutil

    from culture_rl.core.errors import ConfigError
    from culture_rl.inference.pools import LocalInference
    from culture_rl.models.loading import load_tokenizer
    from culture_rl.models.adapters import ADAPTER_SET, load_adapter_set, read_adapter_set

    folder, base, _ = adapter_set
    model = LocalInference(load_adapter_set(folder), load_tokenizer(base))
    with pytest.raises(ConfigError, match="'Calyxa'"):
        model.option_distributions(["q"], [[" 1", " 2"]], routes=["Calyxa"])
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    manifest = json.loads((broken / ADAPTER_SET).read_text())
    manifest["adapters"]["Borenia"] = str(tmp_path / "gone")
    (broken / ADAPTER_SET).write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="Borenia"):
        read_adapter_set(broken)
