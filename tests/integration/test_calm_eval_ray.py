"""A CALM export is a model the evaluation harness can evaluate: on the evaluation actors its
identity state is injected into generation and scoring, and the numbers equal the same export
evaluated in this process. It is the session quickstart's CALM stage's export."""

from __future__ import annotations

import os

import pytest

from culture_rl.config import load_config
from culture_rl.eval.evaluate import evaluate
from culture_rl.eval.harness import plan_evaluation, resolve_models, run_evaluation
from culture_rl.inference.pools import LocalInference
from culture_rl.models.calm_policy import load_calm_export
from culture_rl.data.align_data import load_align_data

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EVALUATIONS = ["associations", "wvs"]


def _key(record):
    return record["model"], record["culture"], record["evaluation"], record["metric"], \
        record["subset"]


def test_calm_export_on_the_evaluation_actors_equals_in_process(quickstart_run, tmp_path):
    session, _ = quickstart_run
    export = session.run_dir / "calm" / "export"
    assert (export / "calm.json").is_file(), "the quickstart's CALM stage left no export"
    config = load_config(os.path.join(REPO, "configs", "quickstart.yaml"),
                         [f"run.storage_path={tmp_path}", "run.name=calm_eval",
                          f"eval.evaluations={EVALUATIONS}", "eval.max_cues=6",
                          "eval.max_new_tokens=12"])
    data = load_align_data(config)
    models = {"calm": str(export), "base": str(session.run_dir / "pretrain" / "export")}
    assert resolve_models(config, models)["calm"] == str(export.resolve())
    plan = plan_evaluation(config, data, models)
    results = run_evaluation(config, plan, command="culture-rl eval (test)")
    got = {_key(r): r["value"] for r in results["records"] if r["model"] == "calm"}
    assert {k[2] for k in got} == set(EVALUATIONS)

    model, tokenizer, _ = load_calm_export(export)
    local = LocalInference(model, tokenizer, 4)
    expected = {_key(r): r["value"] for r in
                evaluate("calm", local, plan.inputs, plan.evaluations).records}
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-4), key
    # The identity state changes what the model says: CALM is not its base model.
    base = {_key(r)[1:]: r["value"] for r in results["records"] if r["model"] == "base"}
    assert {k[1:]: v for k, v in got.items()} != base
