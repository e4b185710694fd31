"""The evaluation harness on the session's real Ray: two models on the evaluation actor group
give the same numbers as the same models evaluated in-process, results land in eval.json and
eval.csv, and a rerun evaluates only the model whose files changed."""

from __future__ import annotations

import csv
import json
import os
import time

import pytest

from culture_rl.config import ModelConfig, TinyModelConfig, load_config
from culture_rl.eval.evaluate import evaluate
from culture_rl.eval.harness import plan_evaluation, run_evaluation
from culture_rl.inference.pools import LocalInference
from culture_rl.models.loading import build_tiny_model, load_model, load_tokenizer
from culture_rl.data.align_data import load_align_data

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    storage = tmp_path_factory.mktemp("runs")
    config = load_config(os.path.join(REPO, "configs", "eval_quickstart.yaml"),
                         [f"run.storage_path={storage}", "run.name=evalray", "eval.max_cues=8",
                          "eval.max_statements=24", "eval.tension_top_n=8",
                          "eval.max_new_tokens=12", "rollout.max_new_tokens=16",
                          "eval.cpus_per_worker=0.5"])
    data = load_align_data(config)
    shape = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                            vocab_size=600)
    answers = [doc for doc in data.corpus if doc.startswith("Cue:")]  # untagged associations
    models = {label: _briefly_trained(build_tiny_model(ModelConfig(tiny=shape), data.corpus,
                                                       storage / label, seed), answers, steps)
              for label, seed, steps in (("first", 0, 150), ("second", 1, 80))}
    return config, data, models


def _briefly_trained(path, corpus, steps: int) -> str:
    """A few LM steps on association answers (~3 s): enough for answers made of the world's
    words (an untrained model's parse to nothing and leave the lexical numbers empty)."""
    import torch

    model, tokenizer = load_model(path), load_tokenizer(path)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    model.train()
    for step in range(steps):
        batch = tokenizer(corpus[step * 16 % len(corpus):][:16], return_tensors="pt",
                          padding=True, truncation=True, max_length=96)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(path)
    return str(path)


def _key(record):
    return (record["model"], record["culture"], record["evaluation"], record["metric"],
            record["subset"])


def test_actor_group_results_equal_in_process_results(ray_session, setting, capsys):
    config, data, models = setting
    plan = plan_evaluation(config, data, models)
    results = run_evaluation(config, plan, command="culture-rl eval (test)")
    out = config.run_dir / "eval"
    written = json.loads((out / "eval.json").read_text("utf-8"))
    assert written["records"] == results["records"] and written["command"] == "culture-rl eval (test)"
    assert set(written["models"]) == {"first", "second"}
    assert {r["evaluation"] for r in written["records"]} == set(config.eval.evaluations)
    assert {r["culture"] for r in written["records"]} >= {"Avalor", "Borenia", "Calyxa"}
    counts = {(r["evaluation"], r["culture"]): r["n"] for r in written["records"]
              if r["subset"] == "all" and r["metric"] in ("p@1", "js", "accuracy", "rho")}
    assert counts[("associations", "Borenia")] == 8 and counts[("wvs", "Borenia")] == 40
    assert counts[("value_classification", "all")] == 24
    with (out / "eval.csv").open(encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == len(results["records"])
    assert len(written["comparisons"]) > 0  # first vs second on every culture and norm

    for label in ("first", "second"):  # the same model in this process, one batch at a time
        local = LocalInference(load_model(models[label]), load_tokenizer(models[label]), 4)
        expected = {_key(r): r["value"] for r in
                    evaluate(label, local, plan.inputs, plan.evaluations).records}
        got = {_key(r): r["value"] for r in results["records"] if r["model"] == label}
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, abs=1e-4, nan_ok=False), key
    first = {_key(r)[1:]: r["value"] for r in results["records"] if r["model"] == "first"}
    second = {_key(r)[1:]: r["value"] for r in results["records"] if r["model"] == "second"}
    assert first != second  # two different models: the test can tell them apart
    capsys.readouterr()


def test_rerun_reuses_unchanged_models(ray_session, setting, capsys):
    config, data, models = setting
    plan = plan_evaluation(config, data, models)
    before = json.loads((config.run_dir / "eval" / "eval.json").read_text("utf-8"))
    capsys.readouterr()
    weights = next(p for p in os.scandir(models["second"]) if p.name.endswith(".safetensors"))
    time.sleep(0.01)
    os.utime(weights.path)  # "re-exported": a new modification time
    results = run_evaluation(config, plan, command="again")
    out = capsys.readouterr().out
    assert "first (1/2): cached" in out
    assert "second (2/2): cached" not in out and "second (2/2):" in out
    assert [r for r in results["records"] if r["model"] == "first"] == \
        [r for r in before["records"] if r["model"] == "first"]


def test_killed_evaluation_actor_is_replaced_and_the_numbers_stand(ray_session, setting):
    """An evaluation actor SIGKILLed before a pass: it is restarted on its bundle, loads the
    model under evaluation and its chunk is retried; the numbers equal the in-process ones."""
    import signal

    import ray

    from culture_rl.eval.harness import EvaluationGroup

    config, data, models = setting
    plan = plan_evaluation(config, data, models)
    group = EvaluationGroup(config)
    try:
        group.load(models["first"])
        inference = group.load(models["second"])  # actors now serve the second model
        victim = group.group.actors[1]
        victim_pid = ray.get(victim.pid.remote())
        os.kill(victim_pid, signal.SIGKILL)
        got = evaluate("second", inference, plan.inputs, ["associations", "wvs"]).records
        assert inference.replacements == 1
        assert ray.get(group.group.actors[1].pid.remote()) != victim_pid
    finally:
        group.shutdown()
    local = LocalInference(load_model(models["second"]), load_tokenizer(models["second"]), 4)
    expected = evaluate("second", local, plan.inputs, ["associations", "wvs"]).records
    assert [_key(r) for r in got] == [_key(r) for r in expected]
    for a, b in zip(got, expected):
        assert a["value"] == pytest.approx(b["value"], abs=1e-4), _key(a)
