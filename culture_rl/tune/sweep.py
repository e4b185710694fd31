"""``culture-rl sweep``: a Ray Tune ``Tuner`` over cultures x SFT hyper-parameters.

Each trial is a *search point* — a culture (``tune.grid_search`` over ``sweep.cultures``) and a
learning rate, LoRA r/alpha and number of epochs (grid or random) — and the trial
(:class:`culture_rl.tune.trial.SweepTrial`) builds and fits a Ray Train ``TorchTrainer`` for
that point through the same :func:`run_stage` as ``culture-rl sft`` (Train inside Tune, as Ray's
Train V2 guide does it). The SFT stage reports once per epoch with the held-out P@5 and
validation loss; a Train callback hands each report to the trial, which gives it to the Tuner,
where ASHA stops trials whose metric trails the others.

The pure parts (search space, trial ids, concurrency arithmetic, per-trial configs) are in
``plan.py``, the Ray classes in ``trial.py``; this module validates and drives
(:func:`run_sweep`).

Layout (``<run dir>/sweeps/<sweep.name>/``)::

    tune/                     Tune's experiment (restored on a rerun)
    trials/<trial id>/sft/    the trial's Ray Train run: checkpoints, metrics.jsonl, export/
    sweep_config.yaml         the settings this sweep was started with
    best_configs.csv/.md, trials.csv, sweep.png

The trial id is made from the search point (``Borenia_lr0.003_r16_a32_e4``), not from Tune's
random experiment id, so a rerun finds every trial's folder again: Tune's own restore continues
the unfinished trials, and each trial's SFT stage resumes from its latest checkpoint (or, when
it had finished, replays its recorded epochs to Tune instead of training again).

Concurrency: Train V2 starts each trial's workers in their own placement group, outside the
trial's resources, so Tune cannot see them. A trial reserves only its driver
(``sweep.trial_driver_cpus``) and ``max_concurrent_trials`` is derived from what one trial's
workers plus driver need against ``ray.cluster_resources()`` (see :func:`max_concurrent`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from culture_rl.config import ExperimentConfig, config_to_yaml
from culture_rl.core.errors import ConfigError
from culture_rl.tune.report import render_markdown, write_report
from culture_rl.tune.plan import (asha_max_t, changed_settings, count_trials, grid_trial_name,
                                  max_concurrent, normalise_point, param_space, random_trial_name,
                                  require_cap_when_autoscaling, trial_resources,
                                  with_absolute_paths)
from culture_rl.data.align_data import load_align_data
from culture_rl.distributed.cluster import connect
from culture_rl.methods.align.sft import TINY, run_pretrain
from culture_rl.tune.trial import PerCultureASHA, SweepProgress, SweepTrial

FINISHED_STATUS, STOPPED_STATUS, ERROR_STATUS = "finished", "stopped early", "error"


# ---------------------------------------------------------------------------- validation


def resolve_cultures(config: ExperimentConfig, data) -> list[str]:
    """``sweep.cultures`` as culture names (empty: every culture of the world)."""
    wanted = list(config.sweep.cultures)
    if config.data.swow_path:
        own = data.target_culture
        if any(c != own for c in wanted):
            raise ConfigError(f"with your own data.swow_path the sweep runs on its one culture "
                              f"({own}); leave sweep.cultures empty or set it to [{own}]",
                              field="sweep.cultures")
        return [own]
    if not wanted:
        return [c.name for c in data.world.cultures]
    names = []
    for key in wanted:
        try:
            names.append(data.world.culture(key).name)
        except KeyError as err:
            raise ConfigError(str(err.args[0]), field="sweep.cultures") from None
    if len(set(names)) != len(names):
        raise ConfigError(f"a culture is listed twice: {wanted}", field="sweep.cultures")
    return names


def validate(config: ExperimentConfig) -> None:
    """Settings a sweep cannot run with, found before Ray or any folder is touched."""
    if not config.sft.eval_each_epoch:
        raise ConfigError("a sweep compares trials by their per-epoch evaluation; set it to "
                          "true", field="sft.eval_each_epoch")
    if config.sft.max_steps != -1:
        raise ConfigError("a sweep counts training in epochs (ASHA's rungs, sweep.epochs); "
                          "set it to -1", field="sft.max_steps")
    if not config.lora.enabled and (config.sweep.lora_r or config.sweep.lora_alpha):
        raise ConfigError("lora.enabled is false, so there is no LoRA rank to sweep",
                          field="sweep.lora_r" if config.sweep.lora_r else "sweep.lora_alpha")
    require_cap_when_autoscaling(config.sweep, config.resources)


def sweep_dir(config: ExperimentConfig) -> Path:
    return config.run_dir / "sweeps" / config.sweep.name


def check_same_settings(config: ExperimentConfig, folder: Path) -> None:
    """A rerun resumes the sweep in ``folder``: only with the settings it was started with."""
    import yaml

    saved = folder / "sweep_config.yaml"
    if not saved.is_file():
        return
    changed = changed_settings(yaml.safe_load(saved.read_text("utf-8")),
                               yaml.safe_load(config_to_yaml(config)))
    if changed:
        raise ConfigError(f"{folder} holds a sweep started with other settings "
                          f"({', '.join(changed[:4])}{', ...' if len(changed) > 4 else ''}); "
                          "use another sweep.name to start a new one", field="sweep.name")


# ---------------------------------------------------------------------------- results


def trial_points(experiment_path: str) -> dict[str, dict]:
    """Each trial's search point by trial name, from Tune's experiment state: a trial that
    failed before its first result has no config in its ``Result``."""
    from ray.tune import ExperimentAnalysis

    return {Path(trial.path).name: trial.config
            for trial in ExperimentAnalysis(experiment_path).trials}


def result_rows(grid, metric: str, points: dict[str, dict]) -> list[dict]:
    """One row per trial of Tune's ResultGrid (see culture_rl.tune.report); ``points`` are
    the trials' search points by trial name (:func:`trial_points`)."""
    rows = []
    for result in grid:
        name = Path(result.path).name
        point = normalise_point(result.config or points[name])
        last = result.metrics or {}
        epochs_run = int(last.get("epoch", 0) or 0)
        if result.error is not None:
            status = ERROR_STATUS
        elif epochs_run < point["epochs"]:
            status = STOPPED_STATUS
        else:
            status = FINISHED_STATUS
        rows.append({"trial_id": name, **point, "status": status,
                     "epochs_run": epochs_run, metric: last.get(metric),
                     "error": _one_line(result.error)})
    rows.sort(key=lambda row: row["trial_id"])
    return rows


def _one_line(error) -> str | None:
    if error is None:
        return None
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


@dataclass
class SweepResult:
    sweep_dir: Path
    rows: list[dict]  # every trial
    best: list[dict]  # the best trial per culture
    files: dict[str, Path] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(row["status"] == status for row in self.rows)


# --------------------------------------------------------------------------------- driver


def _make_tuner(config: ExperimentConfig, cultures: list[str], folder: Path, concurrency: int,
                total: int):
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    sweep = config.sweep
    # The driver of a trial only starts and watches its Ray Train run; the Train workers get
    # their own placement group (Train V2), so the trial reserves just the driver's share.
    trainable = tune.with_resources(
        tune.with_parameters(SweepTrial, base=config, folder=str(folder)),
        {"CPU": sweep.trial_driver_cpus})
    experiment = folder / "tune"
    if tune.Tuner.can_restore(str(experiment)):
        print(f"[sweep] resuming the sweep in {experiment}", flush=True)
        return tune.Tuner.restore(str(experiment), trainable=trainable,
                                  resume_unfinished=True, resume_errored=True)
    namer = grid_trial_name if sweep.search == "grid" else random_trial_name
    scheduler = (PerCultureASHA(time_attr="epoch", max_t=asha_max_t(config),
                                grace_period=sweep.grace_period,
                                reduction_factor=sweep.reduction_factor)
                 if sweep.scheduler == "asha" else None)
    return tune.Tuner(
        trainable,
        param_space=param_space(config, cultures),
        tune_config=tune.TuneConfig(
            metric=sweep.metric, mode=sweep.mode, scheduler=scheduler,
            # Seeded, so a random sweep draws the same points (and trial ids) every time. The
            # concurrency cap goes here: TuneConfig.max_concurrent_trials is ignored once a
            # search algorithm of this kind is given.
            search_alg=BasicVariantGenerator(max_concurrent=concurrency,
                                             random_state=config.run.seed),
            num_samples=sweep.num_samples if sweep.search == "random" else 1,
            trial_name_creator=namer, trial_dirname_creator=namer),
        run_config=tune.RunConfig(
            name="tune", storage_path=str(folder), verbose=0,
            # A trial's state is its Train run's own checkpoints (per-trial folders), so Tune
            # saves none of its own.
            checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False),
            callbacks=[SweepProgress(total, sweep.metric)]))


def describe_plan(config: ExperimentConfig, cultures: list[str], total: int,
                  concurrency: int) -> str:
    sweep = config.sweep
    per_trial = trial_resources(config.resources, sweep.trial_driver_cpus)
    scheduler = sweep.scheduler
    if scheduler == "asha":
        scheduler += (f" (grace {sweep.grace_period}, reduction {sweep.reduction_factor:g}, "
                      f"max_t {asha_max_t(config)} epochs)")
    return (f"[sweep] {total} trials ({', '.join(cultures)} x {sweep.search} search), "
            f"{concurrency} at a time (each: "
            f"{', '.join(f'{v:g} {k}' for k, v in per_trial.items())}); metric {sweep.metric} "
            f"({sweep.mode}); scheduler {scheduler}")


def prepare_base_model(config: ExperimentConfig, data) -> None:
    """``model.path: tiny``: pretrain the tiny base once, before any trial starts, so all
    trials fine-tune the same base (a finished pretrain stage is a no-op)."""
    if config.model.path == TINY:
        run_pretrain(config, data)


def run_sweep(config: ExperimentConfig) -> SweepResult:
    """Validate, plan the concurrency, pretrain the tiny base if needed, run (or resume) the
    Tuner, and write the per-culture best-configuration table and the plot."""
    import ray

    validate(config)
    config = with_absolute_paths(config)
    folder = sweep_dir(config)
    check_same_settings(config, folder)
    data = load_align_data(config)
    cultures = resolve_cultures(config, data)
    total = count_trials(config, cultures)
    connect(config.resources.address)
    concurrency = max_concurrent(config.sweep, config.resources, ray.cluster_resources(), total)
    print(describe_plan(config, cultures, total, concurrency), flush=True)

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sweep_config.yaml").write_text(config_to_yaml(config), "utf-8")
    prepare_base_model(config, data)

    grid = _make_tuner(config, cultures, folder, concurrency, total).fit()
    rows = result_rows(grid, config.sweep.metric, trial_points(grid.experiment_path))
    best, files = write_report(folder, rows, config.sweep.metric, config.sweep.mode)
    result = SweepResult(folder, rows, best, files)
    print(f"[sweep] done: {result.count(FINISHED_STATUS)} finished, "
          f"{result.count(STOPPED_STATUS)} stopped early, {result.count(ERROR_STATUS)} failed",
          flush=True)
    for row in rows:
        if row["status"] == ERROR_STATUS:
            print(f"[sweep] {row['trial_id']} failed: {row['error']}", flush=True)
    return result


def print_summary(result: SweepResult, metric: str) -> None:
    print()
    print(render_markdown(result.best, metric))
    print(f"Best configurations: {result.files['best_md']} ({result.files['best_csv']}); "
          f"all trials: {result.files['trials_csv']}; plot: {result.files['plot']}")
