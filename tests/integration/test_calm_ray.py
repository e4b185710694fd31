"""CALM training on real Ray Train + DeepSpeed ZeRO-2 with 2 CPU workers, on the session's tiny
base: every loss term falls, resume after a fault continues at the right step, the export
reloads with identical logits, and results.json compares CALM, the baseline and each ablation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from culture_rl.config import load_config
from culture_rl.models.calm_policy import load_calm_export
from culture_rl.train.calm_loop import LOSS_TERMS
from culture_rl.train.sft import TrainingError
from culture_rl.data.align_data import load_align_data
from culture_rl.methods.calm.train import build_calm_job, run_calm

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def calm_config(quickstart_run, storage, name, extra=()):
    config, _ = quickstart_run
    base = config.run_dir / "pretrain" / "export" / "model"
    return load_config(str(REPO / "configs" / "calm_quickstart.yaml"), [
        f"run.storage_path={storage}", f"run.name={name}", f"model.path={base}",
        f"world.num_cues={config.world.num_cues}", "deepspeed.zero_stage=2", *extra])


def records(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text("utf-8").splitlines()
            if line.strip()]


@pytest.fixture(scope="module")
def calm_run(quickstart_run, tmp_path_factory):
    storage = tmp_path_factory.mktemp("calm")
    config = calm_config(quickstart_run, storage, "calm",
                         ["calm.train.epochs=4", "calm.train.logging_steps=4",
                          "calm.train.compare_epochs=2"])
    data = load_align_data(config, write_world=False)
    return config, data, run_calm(config, data)


def test_calm_at_zero2_lowers_every_loss_term(calm_run):
    config, _, results = calm_run
    logged = [r for r in records(config.run_dir / "calm" / "metrics.jsonl") if "loss" in r]
    steps = [r["step"] for r in logged]
    assert steps == sorted(set(steps)) and steps[0] == 1 and steps[-1] == 48
    present = [t for t in LOSS_TERMS if t in logged[0]]
    assert set(present) == {"classification", "contrastive", "prototype", "orthogonality",
                            "load_balance", "culture"}
    for term in ["loss", *present]:
        first, last = logged[0][term], logged[-1][term]
        assert last < first, (term, first, last)
    epochs = [r for r in records(config.run_dir / "calm" / "metrics.jsonl")
              if "routing_by_culture" in r]
    assert len(epochs) == 4
    routing = epochs[-1]["routing_by_culture"]
    assert sorted(routing) == ["Avalor", "Borenia", "Calyxa"]
    assert all(len(row) == config.calm.moe.num_experts and abs(sum(row) - 1) < 1e-3
               for row in routing.values())


def test_results_compare_calm_baseline_and_each_ablation(calm_run):
    config, _, results = calm_run
    saved = json.loads((config.run_dir / "calm" / "results.json").read_text())
    expected = {"calm", "baseline", "calm_short",
                *(f"no_{m}" for m in config.calm.train.ablations)}
    assert set(saved["models"]) == expected
    for name, scores in saved["models"].items():
        assert 0 <= scores["accuracy"] <= 1 and 0 <= scores["macro_f1"] <= 1, name
        assert set(scores["by_culture"]) == {"Avalor", "Borenia", "Calyxa"}
        assert set(scores["by_subset"]) == {"seen", "unseen"}, name  # the quickstart's task
        assert scores["by_subset"]["unseen"]["n"] == 48, name
    assert saved["task"] == "culture_dependent" and saved["n_heldout"] == 96
    assert saved["models"]["baseline"]["steps"] == saved["models"]["calm"]["steps"]
    assert "| baseline |" in (config.run_dir / "calm" / "report.md").read_text()
    # Rerun: a no-op that says so.
    again = run_calm(config, load_align_data(config, write_world=False))
    assert again["models"]["calm"]["already_finished"] is True


def test_export_reloads_with_identical_logits(calm_run):
    import torch
    from safetensors.torch import load_file

    config, _, _ = calm_run
    export = config.run_dir / "calm" / "export"
    model, tokenizer, meta = load_calm_export(export)
    assert meta["label_names"] == ["achievement", "autonomy", "harmony", "tradition"][
        :meta["num_labels"]] or len(meta["label_names"]) == meta["num_labels"]
    assert meta["base"] == "adapter" and (export / "adapter" / "adapter_config.json").is_file()
    reference = load_file(str(export / "check.safetensors"))
    with torch.no_grad():
        out = model(input_ids=reference["input_ids"],
                    attention_mask=reference["attention_mask"])
    assert torch.equal(out.class_logits, reference["class_logits"])
    assert torch.equal(out.logits, reference["logits"])
    # And value identification from text, through the reloaded tokenizer.
    batch = tokenizer(["Elders in Avalor say tradition matters."], return_tensors="pt")
    assert model.identity_state(batch["input_ids"], batch["attention_mask"]
                                ).class_logits.shape == (1, meta["num_labels"])


def test_interrupted_calm_run_resumes_at_the_right_step(quickstart_run, tmp_path):
    extra = ["calm.train.epochs=2", "calm.train.save_steps=4", "calm.train.logging_steps=1",
             "calm.train.compare=false", "calm.train.fault_injection_step=8"]
    config = calm_config(quickstart_run, tmp_path, "resume", extra)
    data = load_align_data(config, write_world=False)
    with pytest.raises(TrainingError, match="fault injected after step 8"):
        run_calm(config, data)
    stage = config.run_dir / "calm"
    assert not (stage / "export").exists()
    assert max(r["step"] for r in records(stage / "metrics.jsonl")) == 8
    run_calm(config, data)  # the same run name: resumes after step 8
    logged = [r["step"] for r in records(stage / "metrics.jsonl") if "loss" in r]
    total = 2 * (len(build_calm_job(config, data).train_rows) // 3 // 4 // 2)
    assert logged == list(range(1, total + 1)), logged  # each step once, none skipped
    finished = json.loads((stage / "export" / "finished.json").read_text())
    assert finished["global_step"] == total
