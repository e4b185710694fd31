"""Ray Tune sweeps with real Ray Train trials on the session's local Ray (2 CPUs).

Each trial is a TorchTrainer run (1 worker x 0.75 CPU + a 0.25-CPU trial driver, so two trials
fit at once) fine-tuning the quickstart's pretrained tiny base; tiny epochs keep each trial at
about a minute, most of it Ray Train starting its worker.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import pytest

from culture_rl.cli import main
from culture_rl.config import load_config
from culture_rl.tune.sweep import run_sweep

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SWEEP_YAML = str(REPO / "configs" / "sweep_cultures.yaml")
# Small trials: 4 examples per cue at micro batch 8 (~20 steps an epoch), 6 held-out cues.
FAST = ["data.examples_per_cue=4", "sft.micro_batch_size=8", "sft.eval_max_cues=6",
        "sft.logging_steps=50", "lora.merge_on_export=false"]


@pytest.fixture(scope="module")
def base_model(quickstart_run) -> str:
    """The quickstart's pretrained tiny base (same world settings as the sweep config)."""
    config, _ = quickstart_run
    return str(config.run_dir / "pretrain" / "export" / "model")


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def wait_for_free_cpus(ray, cpus: float, timeout_s: float = 60) -> float:
    """Trials' Train workers must be gone once the sweep returns (none leaked)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        free = ray.available_resources().get("CPU", 0)
        if free >= cpus - 1e-6:
            return free
        time.sleep(1)
    return ray.available_resources().get("CPU", 0)


def test_grid_of_two_cultures_gives_one_best_row_each_and_resumes(ray_session, base_model,
                                                                  tmp_path, capsys):
    argv = ["sweep", "--config", SWEEP_YAML, f"run.storage_path={tmp_path}",
            f"model.path={base_model}", "sweep.name=grid", "sweep.cultures=[Borenia, Calyxa]",
            "sweep.learning_rate=[1e-3, 3e-3]", "sweep.lora_r=[8]", "sweep.epochs=[1]",
            "sweep.scheduler=none", *FAST]
    assert main(argv) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "quickstart" / "sweeps" / "grid"
    assert "4 trials (Borenia, Calyxa x grid search), 2 at a time" in out
    assert out.count("[sweep] started ") == 4 and out.count("[sweep] finished: ") == 4

    trials = read_csv(folder / "trials.csv")
    assert sorted(t["trial_id"] for t in trials) == [
        f"{c}_lr{lr}_r8_a32_e1" for c in ("Borenia", "Calyxa") for lr in ("0.001", "0.003")]
    assert all(t["status"] == "finished" and t["epochs_run"] == "1" for t in trials)
    best = read_csv(folder / "best_configs.csv")
    assert [b["culture"] for b in best] == ["Borenia", "Calyxa"]  # exactly one row each
    for row in best:
        mine = [float(t["eval_p@5"]) for t in trials if t["culture"] == row["culture"]]
        assert float(row["eval_p@5"]) == max(mine)
        assert row["trial_id"] in {t["trial_id"] for t in trials}
    markdown = (folder / "best_configs.md").read_text("utf-8")
    assert markdown.count("| Borenia |") == 1 and markdown.count("| Calyxa |") == 1
    assert (folder / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert "| culture | learning_rate |" in out and str(folder / "best_configs.md") in out

    # Each trial ran its own Ray Train run, named by the trial id, to a finished export.
    for t in trials:
        stage = folder / "trials" / t["trial_id"] / "sft"
        assert (stage / "export" / "finished.json").is_file()
        assert any(stage.glob("checkpoint_*"))
    assert wait_for_free_cpus(ray_session, 2.0) >= 2.0

    # Rerun: Tune restores the finished experiment; no trial trains again.
    stamps = {p: p.stat().st_mtime for p in folder.glob("trials/*/sft/metrics.jsonl")}
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert "resuming the sweep" in again and "[sweep] started " not in again
    assert {p: p.stat().st_mtime for p in stamps} == stamps
    assert read_csv(folder / "best_configs.csv") == best

    # Without Tune's state the trials start again, find their finished Train runs by trial id
    # and replay the recorded epochs instead of training.
    shutil.rmtree(folder / "tune")
    assert main(argv) == 0
    replayed = capsys.readouterr().out
    assert replayed.count("[sweep] finished: ") == 4
    assert {p: p.stat().st_mtime for p in stamps} == stamps
    assert read_csv(folder / "best_configs.csv") == best


def test_asha_stops_the_trailing_trial_early(ray_session, base_model, tmp_path):
    from ray.tune import ExperimentAnalysis

    # One trial at a time, the good learning rate first: when the hopeless one (1e-7: the
    # model stays the base) reports its first epoch, ASHA's rung at epoch 1 holds the good
    # trial's validation loss and the hopeless one is below the top half -> stopped.
    config = load_config(SWEEP_YAML, [
        f"run.storage_path={tmp_path}", f"model.path={base_model}", "sweep.name=asha",
        "sweep.cultures=[Borenia]", "sweep.learning_rate=[3e-3, 1e-7]", "sweep.lora_r=[8]",
        "sweep.epochs=[3]", "sweep.scheduler=asha", "sweep.grace_period=1", "sweep.max_t=3",
        "sweep.reduction_factor=2", "sweep.metric=eval_loss", "sweep.mode=min",
        "sweep.max_concurrent_trials=1", *FAST])
    result = run_sweep(config)

    by_id = {row["trial_id"]: row for row in result.rows}
    good, bad = by_id["Borenia_lr0.003_r8_a32_e3"], by_id["Borenia_lr1e-07_r8_a32_e3"]
    assert (good["status"], good["epochs_run"]) == ("finished", 3)
    assert (bad["status"], bad["epochs_run"]) == ("stopped early", 1)
    assert [row["trial_id"] for row in result.best] == [good["trial_id"]]

    # The same from Tune's own records: the stopped trial reported fewer epochs than max_t
    # and did not fail.
    analysis = ExperimentAnalysis(str(result.sweep_dir / "tune"))
    reported = {trial.trial_id: len(analysis.trial_dataframes[trial.trial_id])
                for trial in analysis.trials}
    stopped = [t for t in analysis.trials if reported[t.trial_id] < 3]
    assert len(stopped) == 1 and stopped[0].status == "TERMINATED"
    assert stopped[0].config["learning_rate"] == 1e-7
    # Its Ray Train run was asked to stop and ended normally (export written, no further
    # epoch evaluated), so its worker's CPUs came back.
    stage = result.sweep_dir / "trials" / bad["trial_id"] / "sft"
    evaluated = [json.loads(line)["epoch"] for line in
                 (stage / "metrics.jsonl").read_text("utf-8").splitlines() if "eval_loss" in line]
    assert max(evaluated) < 3 and (stage / "export" / "finished.json").is_file()
    assert not (stage / "stop_requested").exists()
    assert wait_for_free_cpus(ray_session, 2.0) >= 2.0
