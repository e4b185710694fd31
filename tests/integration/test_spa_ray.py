"""The CultureSPA pipeline at tiny size on the session's Ray and trained quickstart base: every
stage runs on real actors and real Ray Train, a rerun skips what is finished and restarts at the
first unfinished stage, and the per-culture adapter set is served by the rollout actors with the
right adapter per request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from culture_rl.config import load_config

pytestmark = pytest.mark.integration

STAGES = ("questions", "unaware", "aware", "related")


@pytest.fixture(scope="module")
def spa_run(quickstart_run, tmp_path_factory):
    from culture_rl.methods.culturespa.pipeline import load_spa_data, run_spa

    qs_config, _ = quickstart_run
    storage = tmp_path_factory.mktemp("spa")
    config = load_config(str(qs_config.run_dir / "config.yaml"), [
        f"run.storage_path={storage}", "run.name=spa",
        f"spa.model_path={qs_config.run_dir / 'pretrain' / 'export' / 'model'}",
        "spa.topics=[social values and norms,economic values,migration]",
        "spa.cultures=[Avalor,Borenia]", "spa.questions_per_topic=6",
        "spa.include_seed_questions=true", "spa.js_threshold=0.02",
        # adapters that are the culture on their own, so the adapter alone is evaluated too
        "spa.specific_culture_in_prompt=false",
        "spa.samples_per_instance=2", "spa.train.max_steps=4", "spa.train.logging_steps=2",
        "spa.ccot_max_new_tokens=6", "spa.lm_guard_docs=16", "eval.cpus_per_worker=1"])
    data = load_spa_data(config)
    return config, data, run_spa(config, data)


def test_every_stage_writes_its_output_and_the_evaluation_is_finite(spa_run):
    config, _, result = spa_run
    out = config.run_dir / "spa"
    for stage in STAGES:
        manifest = json.loads((out / stage / "manifest.json").read_text("utf-8"))
        assert manifest["rows"] == len((out / stage / "data.jsonl").read_text().splitlines())
    stats = result["stats"]
    assert stats["questions"]["attempts"] == 18 and stats["related"]["related"] > 0
    assert set(stats["related"]["by_culture"]) == {"Avalor", "Borenia"}
    rows = result["results"]["rows"]
    assert {(r["model"], r["prompting"]) for r in rows} == {
        ("base", "unprompted"), ("base", "culture"), ("base", "ccot"), ("joint", "culture"),
        ("joint", "ccot"), ("specific", "unprompted"), ("specific", "culture"),
        ("specific", "ccot")}
    assert all(0.0 <= r["js"] <= 1.0 and r["n_questions"] == 40 for r in rows)
    guard = result["results"]["lm_guard"]
    assert set(guard) == {"base", "joint", "specific"} and guard["base"]["rise"] == 0.0
    assert all(g["lm_loss"] > 0 for g in guard.values())
    joint = result["models"]["joint"]
    assert joint.startswith(str(out / "joint-")) and joint.endswith("export/model")
    # its checkpoints are in its own keyed folder: other settings' runs cannot resume from them
    assert any(Path(joint).parents[1].glob("checkpoint_*"))
    adapter_set = Path(result["models"]["specific"])
    adapters = json.loads((adapter_set / "adapter_set.json").read_text())["adapters"]
    assert set(adapters) <= {"Avalor", "Borenia"} and adapters
    assert "WVS JS distance" in (out / "report.md").read_text("utf-8")


def test_rerun_skips_finished_stages_and_restarts_at_the_first_unfinished(spa_run, capsys):
    from culture_rl.methods.culturespa.pipeline import run_spa

    config, data, first = spa_run
    out = config.run_dir / "spa"
    (out / "related" / "manifest.json").unlink()  # as if stopped before stage 4 finished
    capsys.readouterr()
    again = run_spa(config, data)
    log = capsys.readouterr().out
    for stage in ("questions", "unaware", "aware"):
        assert f"[spa] {stage}: already done" in log
    assert "[spa] related: already done" not in log and "[spa] related:" in log
    assert "already finished" in log  # the fine-tuning stages are not trained again
    assert "[spa] evaluation: already done" in log  # same instances, same models
    assert again["results"]["rows"] == first["results"]["rows"]


def test_rollout_actors_serve_each_request_with_its_cultures_adapter(spa_run):
    from culture_rl.data import prompts
    from culture_rl.eval.harness import EvaluationGroup
    from culture_rl.inference.pools import LocalInference
    from culture_rl.models.loading import load_model, load_tokenizer

    config, data, result = spa_run
    adapter_set = result["models"]["specific"]
    adapters = json.loads((Path(adapter_set) / "adapter_set.json").read_text())["adapters"]
    cultures = sorted(adapters)
    questions = data.survey[:4]
    texts = [prompts.survey_prompt(q.question, q.options) for q in questions]
    labels = [prompts.survey_option_labels(len(q.options)) for q in questions]
    routes = [cultures[i % len(cultures)] for i in range(len(texts))]
    group = EvaluationGroup(config)
    try:
        served = group.load(adapter_set).option_distributions(texts, labels, routes=routes)
    finally:
        group.shutdown()
    base = config.spa.model_path
    tokenizer = load_tokenizer(base)
    for culture in cultures:
        alone = LocalInference(load_model(adapters[culture]), tokenizer).option_distributions(
            texts, labels)
        for i, route in enumerate(routes):
            if route == culture:
                assert served[i] == pytest.approx(alone[i], abs=1e-4), (culture, i)
    if len(cultures) == 2:  # the two adapters answer the same prompt differently
        a, b = (LocalInference(load_model(adapters[c]), tokenizer).option_distributions(
            texts[:1], labels[:1])[0] for c in cultures)
        assert a != pytest.approx(b, abs=1e-4)


def test_ccot_aware_answers_are_read_after_the_models_own_thoughts(spa_run):
    from culture_rl.data import prompts
    from culture_rl.eval.harness import EvaluationGroup
    from culture_rl.inference.pools import LocalInference
    from culture_rl.models.loading import load_model, load_tokenizer
    from culture_rl.methods.culturespa.pipeline import answer_distributions

    config, data, _ = spa_run
    ccot = config.model_copy(update={"spa": config.spa.model_copy(
        update={"aware_prompting": "ccot"})})
    questions = [{"question": q.question, "options": list(q.options)} for q in data.survey[:4]]
    group = EvaluationGroup(ccot)
    try:
        served = answer_distributions(ccot, questions, "Borenia", group.load(
            config.spa.model_path), workers=1)
    finally:
        group.shutdown()
    local = LocalInference(load_model(config.spa.model_path),
                           load_tokenizer(config.spa.model_path))
    heads = [prompts.ccot_prompt(q["question"], q["options"], "Borenia") for q in questions]
    thoughts = local.generate(heads, config.spa.ccot_max_new_tokens)
    labels = [prompts.survey_option_labels(len(q["options"])) for q in questions]
    after = local.option_distributions([h + t.split("\n")[0] + prompts.ccot_answer_suffix()
                                        for h, t in zip(heads, thoughts)], labels)
    prompted = local.option_distributions(
        [prompts.culture_preamble("Borenia") + prompts.survey_prompt(q["question"], q["options"])
         for q in questions], labels)
    for i in range(len(questions)):
        assert served[i] == pytest.approx(after[i], abs=1e-4), i
    assert any(served[i] != pytest.approx(prompted[i], abs=1e-3) for i in range(len(questions)))
