"""The sweep's pure parts: search space, trial ids, concurrency arithmetic, per-trial configs,
results tables and plot; bad sweep settings through the CLI (exit 2, one line, the field)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from culture_rl.cli import main
from culture_rl.config import ResourcesConfig, SweepConfig, load_config
from culture_rl.core.errors import ConfigError, ResourceError
from culture_rl.tune import plan as sweep_plan
from culture_rl.tune import report, sweep

REPO = Path(__file__).resolve().parents[2]
SWEEP_YAML = str(REPO / "configs" / "sweep_cultures.yaml")


def config_with(*overrides):
    return load_config(SWEEP_YAML, list(overrides))


# ------------------------------------------------------------------------------ search space


def test_unswept_hyper_parameters_take_the_base_values():
    config = load_config(None, ["sft.learning_rate=2e-4", "lora.r=4", "lora.alpha=8",
                                "sft.epochs=2.5"])
    assert sweep_plan.search_values(config) == {"learning_rate": [2e-4], "lora_r": [4],
                                           "lora_alpha": [8], "epochs": [3]}


def test_grid_space_is_a_grid_over_cultures_and_the_varied_lists():
    config = config_with()
    space = sweep_plan.param_space(config, ["Borenia", "Calyxa"])
    assert space["culture"] == {"grid_search": ["Borenia", "Calyxa"]}
    assert space["learning_rate"] == {"grid_search": [1e-3, 3e-3]}
    assert space["lora_r"] == {"grid_search": [8, 16]}
    assert space["lora_alpha"] == 32 and space["epochs"] == 4  # one value: a constant
    assert sweep_plan.count_trials(config, ["Borenia", "Calyxa"]) == 8


def test_random_space_samples_the_learning_rate_log_uniformly():
    from ray.tune.search.sample import Categorical, Float

    config = config_with("sweep.search=random", "sweep.num_samples=3",
                         "sweep.learning_rate=[1e-4, 1e-2]", "sweep.epochs=[2, 3]")
    space = sweep_plan.param_space(config, ["Borenia"])
    assert isinstance(space["learning_rate"], Float)
    assert (space["learning_rate"].lower, space["learning_rate"].upper) == (1e-4, 1e-2)
    assert isinstance(space["epochs"], Categorical) and space["epochs"].categories == [2, 3]
    assert sweep_plan.count_trials(config, ["Borenia", "Calyxa"]) == 6


def test_trial_id_is_deterministic_and_rounds_the_learning_rate():
    point = {"culture": "Borenia", "learning_rate": 0.0031234567, "lora_r": 16.0,
             "lora_alpha": 32, "epochs": 4}
    assert sweep_plan.trial_id(point) == "Borenia_lr0.00312_r16_a32_e4"
    assert sweep_plan.trial_id(dict(point)) == sweep_plan.trial_id(point)
    assert sweep_plan.normalise_point(point)["learning_rate"] == 0.00312
    assert sweep_plan.trial_id({**point, "learning_rate": 1e-5}) == "Borenia_lr1e-05_r16_a32_e4"


def test_trial_names_for_grid_and_random_search():
    class FakeTrial:
        config = {"culture": "Calyxa", "learning_rate": 1e-3, "lora_r": 8, "lora_alpha": 16,
                  "epochs": 2}
        trial_id = "3f2a1_00007"

    assert sweep_plan.grid_trial_name(FakeTrial()) == "Calyxa_lr0.001_r8_a16_e2"
    # Random samples may repeat a point; the (seeded) sampling order keeps names apart.
    assert sweep_plan.random_trial_name(FakeTrial()) == "Calyxa_lr0.001_r8_a16_e2_00007"


def test_asha_max_t_defaults_to_the_longest_epochs():
    assert sweep_plan.asha_max_t(config_with("sweep.epochs=[2, 5]")) == 5
    assert sweep_plan.asha_max_t(config_with("sweep.epochs=[2, 5]", "sweep.max_t=3")) == 3


# ------------------------------------------------------------------------------ concurrency


def resources(**fields):
    return ResourcesConfig(**fields)


def test_plan_line_says_trials_concurrency_and_scheduler():
    line = sweep.describe_plan(config_with(), ["Borenia", "Calyxa"], 8, 2)
    assert line == ("[sweep] 8 trials (Borenia, Calyxa x grid search), 2 at a time (each: "
                    "1 CPU); metric eval_p@5 (max); scheduler asha (grace 1, reduction 2, "
                    "max_t 4 epochs)")


def test_trial_resources_add_the_workers_and_the_driver():
    assert sweep_plan.trial_resources(resources(num_workers=2, cpus_per_worker=1.5), 0.25) == {
        "CPU": 3.25}
    assert sweep_plan.trial_resources(resources(num_workers=4, use_gpu=True), 0.5) == {
        "CPU": 4.5, "GPU": 4.0}


@pytest.mark.parametrize("workers,cpus,driver,cluster,fit", [
    (1, 0.75, 0.25, {"CPU": 2.0}, 2),            # this machine: 2 trials of 1 CPU
    (2, 0.875, 0.25, {"CPU": 2.0}, 1),
    (2, 1, 0.25, {"CPU": 2.0}, 0),               # 2 workers + a driver do not fit 2 CPUs
    (2, 1, 0.1, {"CPU": 64.0}, 30),
])
def test_trials_that_fit_on_cpus(workers, cpus, driver, cluster, fit):
    per_trial = sweep_plan.trial_resources(resources(num_workers=workers, cpus_per_worker=cpus),
                                      driver)
    assert sweep_plan.trials_that_fit(per_trial, cluster) == fit


def test_gpus_are_the_scarce_resource():
    per_trial = sweep_plan.trial_resources(resources(num_workers=4, use_gpu=True), 0.25)
    assert sweep_plan.trials_that_fit(per_trial, {"CPU": 128.0, "GPU": 8.0}) == 2
    assert sweep_plan.trials_that_fit(per_trial, {"CPU": 128.0}) == 0


def test_max_concurrent_is_capped_by_config_and_trial_count():
    plan = resources(num_workers=1, cpus_per_worker=1)
    cluster = {"CPU": 16.0}
    assert sweep_plan.max_concurrent(SweepConfig(trial_driver_cpus=1), plan, cluster, 100) == 8
    assert sweep_plan.max_concurrent(SweepConfig(trial_driver_cpus=1, max_concurrent_trials=3),
                                plan, cluster, 100) == 3
    assert sweep_plan.max_concurrent(SweepConfig(trial_driver_cpus=1, max_concurrent_trials=30),
                                plan, cluster, 100) == 8  # more would only wait
    assert sweep_plan.max_concurrent(SweepConfig(trial_driver_cpus=1), plan, cluster, 5) == 5


def test_a_trial_that_cannot_fit_is_a_resource_error_with_the_numbers():
    with pytest.raises(ResourceError) as err:
        sweep_plan.max_concurrent(SweepConfig(), resources(num_workers=2, cpus_per_worker=1),
                             {"CPU": 2.0}, 4)
    message = str(err.value)
    assert "2.25 CPU" in message and "has 2 CPU" in message and "num_workers 2" in message


def test_autoscaling_uses_the_configured_cap():
    plan = resources(num_workers=8, use_gpu=True, autoscaling=True)
    with pytest.raises(ConfigError, match="sweep.max_concurrent_trials"):
        sweep_plan.max_concurrent(SweepConfig(), plan, {"CPU": 4.0}, 10)
    assert sweep_plan.max_concurrent(SweepConfig(max_concurrent_trials=4), plan, {"CPU": 4.0},
                                10) == 4


# ------------------------------------------------------------------------ per-trial configs


def test_trial_config_sets_the_point_and_per_epoch_checkpoints():
    config = config_with("sft.save_steps=50")
    point = {"culture": "Calyxa", "learning_rate": 3e-3, "lora_r": 8, "lora_alpha": 16,
             "epochs": 2}
    trial = sweep_plan.trial_config(config, point)
    assert trial.data.culture == "Calyxa"
    assert (trial.sft.learning_rate, trial.sft.epochs, trial.sft.save_steps) == (3e-3, 2, 0)
    assert (trial.lora.r, trial.lora.alpha) == (8, 16)
    assert trial.run == config.run and trial.pretrain == config.pretrain


def test_paths_become_absolute_for_trials_running_in_their_own_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base").mkdir()
    config = load_config(None, ["run.storage_path=runs", "model.path=base"])
    absolute = sweep_plan.with_absolute_paths(config)
    assert absolute.run.storage_path == str(tmp_path / "runs")
    assert absolute.model.path == str(tmp_path / "base")
    assert absolute.run_dir == config.run_dir


def test_epoch_results_merge_each_epochs_records():
    records = [
        {"stage": "sft", "step": 5, "epoch": 0.5, "loss": 2.0},
        {"stage": "sft", "step": 10, "epoch": 1.0, "loss": 1.5},
        {"stage": "sft", "step": 10, "epoch": 1.0, "eval_p@5": 0.4},
        {"stage": "sft", "step": 10, "epoch": 1.0, "eval_loss": 1.7},
        {"stage": "sft", "step": 20, "epoch": 2.0, "eval_p@5": 0.6, "eval_loss": 1.2},
    ]
    results = sweep_plan.epoch_results(records, "eval_p@5")
    assert [r["epoch"] for r in results] == [1, 2]
    assert results[0]["eval_p@5"] == 0.4 and results[0]["eval_loss"] == 1.7
    assert "stage" not in results[0]


def test_changed_settings_ignore_what_a_resumed_sweep_may_change():
    before = config_with().model_dump(mode="json")
    after = config_with("sweep.max_concurrent_trials=1", "resources.address=auto",
                        "sweep.learning_rate=[1e-4]").model_dump(mode="json")
    assert sweep_plan.changed_settings(before, after) == ["sweep.learning_rate",
                                                     "sweep.max_concurrent_trials"]


# ---------------------------------------------------------------------------------- results


class FakeResult:
    def __init__(self, name, config, metrics, error=None):
        self.path, self.config, self.metrics, self.error = f"/x/tune/{name}", config, metrics, error


def test_result_rows_tell_finished_stopped_and_failed_trials_apart():
    point = {"culture": "Borenia", "learning_rate": 3e-3, "lora_r": 8, "lora_alpha": 32,
             "epochs": 3}
    grid = [FakeResult("b_good", point, {"epoch": 3, "eval_p@5": 0.8, "config": point}),
            FakeResult("b_bad", {**point, "learning_rate": 1e-7},
                       {"epoch": 1, "eval_p@5": 0.5}),
            # Failed before its first result: no config in the Result, only in Tune's state.
            FakeResult("b_dead", None, {}, error=RuntimeError("boom\nValueError: bad rank"))]
    points = {"b_dead": {**point, "lora_r": 16}}
    rows = {row["trial_id"]: row for row in sweep.result_rows(grid, "eval_p@5", points)}
    assert (rows["b_good"]["status"], rows["b_good"]["epochs_run"]) == ("finished", 3)
    assert (rows["b_bad"]["status"], rows["b_bad"]["learning_rate"]) == ("stopped early", 1e-7)
    dead = rows["b_dead"]
    assert (dead["status"], dead["lora_r"], dead["eval_p@5"]) == ("error", 16, None)
    assert dead["error"] == "ValueError: bad rank"


def row(trial, culture, lr, value, status="finished", **extra):
    return {"trial_id": trial, "culture": culture, "learning_rate": lr, "lora_r": 8,
            "lora_alpha": 16, "epochs": 2, "status": status, "epochs_run": 2,
            "eval_p@5": value, **extra}


ROWS = [row("b1", "Borenia", 1e-3, 0.5), row("b2", "Borenia", 3e-3, 0.7),
        row("c1", "Calyxa", 1e-3, 0.6), row("c2", "Calyxa", 3e-3, 0.6),
        row("c3", "Calyxa", 1e-2, None, status="error"),
        row("c4", "Calyxa", 3e-2, math.nan, status="stopped early"),
        row("d1", "Dravonia", 1e-3, None, status="error")]


def test_best_per_culture_one_row_each_and_errors_never_win():
    best = report.best_per_culture(ROWS, "eval_p@5", "max")
    assert [(r["culture"], r["trial_id"]) for r in best] == [("Borenia", "b2"),
                                                            ("Calyxa", "c1")]  # tie: first
    lowest = report.best_per_culture(ROWS, "eval_p@5", "min")
    assert [r["trial_id"] for r in lowest] == ["b1", "c1"]
    with pytest.raises(ValueError):
        report.best_per_culture(ROWS, "eval_p@5", "up")


def test_write_report_writes_tables_and_plot(tmp_path):
    best, files = report.write_report(tmp_path, ROWS, "eval_p@5", "max")
    with open(files["best_csv"], newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert [r["culture"] for r in table] == ["Borenia", "Calyxa"]
    assert list(table[0]) == ["culture", "learning_rate", "lora_r", "lora_alpha", "epochs",
                              "eval_p@5", "trial_id"]
    markdown = files["best_md"].read_text("utf-8")
    assert "| Borenia | 0.003 | 8 | 16 | 2 | 0.7 | b2 |" in markdown
    assert files["plot"].read_bytes()[:4] == b"\x89PNG"
    assert len(files["trials_csv"].read_text("utf-8").splitlines()) == len(ROWS) + 1


def test_only_varied_hyper_parameters_are_plotted():
    assert report.varied_hyper_parameters(ROWS) == ["learning_rate"]
    same = [row("x", "Borenia", 1e-3, 0.5)]
    assert report.varied_hyper_parameters(same) == list(report.HYPER_PARAMETERS)


# --------------------------------------------------------------------------- bad settings


@pytest.mark.parametrize("override,field", [
    ("sweep.search=random", "sweep.learning_rate"),         # two rates, but not low < high
    ("sweep.num_samples=3", "sweep.num_samples"),           # grid runs each point once
    ("sweep.metric=eval_loss", "sweep.mode"),               # a loss is minimised
    ("sweep.metric=bleu", "sweep.metric"),
    ("sweep.learning_rate=[1e-3, -1]", "sweep.learning_rate.1"),
    ("sweep.max_t=0.5", "sweep.max_t"),
    ("sweep.reduction_factor=1", "sweep.reduction_factor"),
    ("sweep.scheduler=hyperband", "sweep.scheduler"),
    ("sweep.lora_r=[8, 8]", "sweep.lora_r"),
])
def test_bad_sweep_settings_name_the_field(override, field):
    extra = ["sweep.learning_rate=[3e-3, 1e-3]"] if override == "sweep.search=random" else []
    with pytest.raises(ConfigError) as err:
        config_with(override, *extra)
    assert f": {field}:" in str(err.value)


def run_main(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("override,field", [
    ("sweep.grace_period=5", "sweep.max_t"),
    ("sft.eval_each_epoch=false", "sft.eval_each_epoch"),
    ("sft.max_steps=10", "sft.max_steps"),
    ("sweep.cultures=[Atlantis]", "sweep.cultures"),
    ("resources.autoscaling=true", "sweep.max_concurrent_trials"),
])
def test_cli_bad_sweep_is_one_line_exit_2_and_leaves_no_run_dir(tmp_path, capsys, override,
                                                               field):
    extra = ["sweep.max_t=4"] if field == "sweep.max_t" else []
    code, _, err = run_main(capsys, "sweep", "--config", SWEEP_YAML,
                            f"run.storage_path={tmp_path}/runs", override, *extra)
    assert code == 2, err
    assert err.count("\n") == 1 and field in err
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------- ASHA per culture


def test_asha_compares_a_trial_only_with_its_own_culture():
    from culture_rl.tune.trial import PerCultureASHA

    class Trial:
        def __init__(self, trial_id, culture):
            self.trial_id, self.config = trial_id, {"culture": culture}

    asha = PerCultureASHA(time_attr="epoch", max_t=4, grace_period=1, reduction_factor=2)
    assert asha.set_search_properties("eval_p@5", "max")
    trials = [Trial("a1", "Avalor"), Trial("b1", "Borenia"), Trial("b2", "Borenia")]
    for trial in trials:
        asha.on_trial_add(None, trial)

    def epoch_1(trial, value):
        return asha.on_trial_result(None, trial, {"epoch": 1, "eval_p@5": value})

    assert epoch_1(trials[0], 0.9) == "CONTINUE"
    # Far below Avalor's trial, but the first of its culture at this rung: it goes on.
    assert epoch_1(trials[1], 0.5) == "CONTINUE"
    assert epoch_1(trials[2], 0.4) == "STOP"  # trails Borenia's other trial
