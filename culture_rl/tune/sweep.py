"""``culture-rl sweep``: a Ray Tune ``Tuner`` over cultures x SFT hyper-parameters.

Each trial is a *search point* — a culture (``tune.grid_search`` over ``sweep.cultures``) and a
learning rate, LoRA r/alpha and number of epochs (grid or random) — and the trial
(:class:`culture_rl.tune.trial.SweepTrial`) builds and fits a Ray Train ``TorchTrainer`` for
that point through the same :func:`run_stage` as ``culture-rl sft`` (Train inside Tune, as Ray's
Train V2 guide does it). The SFT stage reports once per epoch with the held-out P@5 and
validation loss; a Train callback hands each report to the trial, which gives it to the Tuner,
where ASHA stops trials whose metric trails the others.

This module holds the pure parts (search space, trial ids, concurrency arithmetic, per-trial
configs) and the driver (:func:`run_sweep`); the Ray classes are in ``trial.py``.

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

import math
from dataclasses import dataclass, field
from pathlib import Path

from culture_rl.config import ExperimentConfig, ResourcesConfig, SweepConfig, config_to_yaml
from culture_rl.errors import ConfigError, ResourceError
from culture_rl.tune.report import HYPER_PARAMETERS, render_markdown, write_report

# Settings that may change between a sweep and its resumption. Everything else is fixed: a
# restored Tuner keeps its search space, scheduler and concurrency.
RUNTIME_ONLY = {"resources": ("address",)}
FINISHED_STATUS, STOPPED_STATUS, ERROR_STATUS = "finished", "stopped early", "error"


# ----------------------------------------------------------------------- search space (pure)


def base_values(config: ExperimentConfig) -> dict:
    """The single value each hyper-parameter takes when the sweep does not vary it."""
    return {"learning_rate": config.sft.learning_rate, "lora_r": config.lora.r,
            "lora_alpha": config.lora.alpha, "epochs": max(1, math.ceil(config.sft.epochs))}


def search_values(config: ExperimentConfig) -> dict[str, list]:
    """Per hyper-parameter: the sweep's list, or the base config's value alone."""
    sweep, base = config.sweep, base_values(config)
    return {name: list(getattr(sweep, name)) or [base[name]] for name in HYPER_PARAMETERS}


def param_space(config: ExperimentConfig, cultures: list[str]) -> dict:
    """Tune's ``param_space``: always a grid over cultures; the hyper-parameters as a grid or,
    for ``search: random``, sampled (learning rate log-uniform in [low, high], the others
    chosen from their lists)."""
    from ray import tune

    values = search_values(config)
    space: dict = {"culture": tune.grid_search(list(cultures))}
    for name, options in values.items():
        if config.sweep.search == "grid":
            space[name] = tune.grid_search(options) if len(options) > 1 else options[0]
        elif name == "learning_rate" and len(options) == 2:
            space[name] = tune.loguniform(options[0], options[1])
        else:
            space[name] = tune.choice(options) if len(options) > 1 else options[0]
    return space


def count_trials(config: ExperimentConfig, cultures: list[str]) -> int:
    if config.sweep.search == "random":
        return len(cultures) * config.sweep.num_samples
    return len(cultures) * math.prod(len(v) for v in search_values(config).values())


def normalise_point(point: dict) -> dict:
    """The values a trial really uses: learning rate to 3 significant digits (so a sampled
    rate and the trial id that names it agree), integer r/alpha/epochs."""
    return {"culture": str(point["culture"]),
            "learning_rate": float(f"{float(point['learning_rate']):.3g}"),
            "lora_r": int(point["lora_r"]), "lora_alpha": int(point["lora_alpha"]),
            "epochs": int(point["epochs"])}


def trial_id(point: dict) -> str:
    """Deterministic name of a search point, used for Tune's trial folder and the trial's
    Ray Train run, so a restarted sweep finds both again."""
    p = normalise_point(point)
    return (f"{p['culture']}_lr{p['learning_rate']:.3g}_r{p['lora_r']}_a{p['lora_alpha']}"
            f"_e{p['epochs']}")


def grid_trial_name(trial) -> str:
    """Tune's ``trial_name_creator`` / ``trial_dirname_creator`` for a grid: every point is
    different. Module level, so it is pickled with the Tuner's state and restored with it."""
    return trial_id(trial.config)


def random_trial_name(trial) -> str:
    """For random search: two samples may draw the same point, so the trial's place in the
    (seeded, hence repeatable) sampling order is added: ``..._e4_00003``."""
    return f"{trial_id(trial.config)}_{trial.trial_id.rsplit('_', 1)[-1]}"


def asha_max_t(config: ExperimentConfig) -> int:
    return config.sweep.max_t or max(search_values(config)["epochs"])


# ------------------------------------------------------------------- concurrency (pure)


def trial_resources(resources: ResourcesConfig, driver_cpus: float) -> dict[str, float]:
    """What one trial holds while it runs: its Train workers plus its Tune driver."""
    need = {"CPU": resources.num_workers * resources.cpus_per_worker + driver_cpus}
    if resources.use_gpu:
        need["GPU"] = float(resources.num_workers)
    return need


def trials_that_fit(per_trial: dict[str, float], cluster: dict[str, float]) -> int:
    """How many trials the cluster holds at once (the scarcest resource decides)."""
    # The small epsilon keeps 2.0 / (0.75 + 0.25) from flooring to 1 on float noise.
    return min(int(float(cluster.get(name, 0)) / need + 1e-9)
               for name, need in per_trial.items() if need > 0)


def require_cap_when_autoscaling(sweep: SweepConfig, resources: ResourcesConfig) -> None:
    if resources.autoscaling and not sweep.max_concurrent_trials:
        raise ConfigError("set how many trials may run at once on an autoscaling cluster "
                          "(its future nodes cannot be counted)",
                          field="sweep.max_concurrent_trials")


def max_concurrent(sweep: SweepConfig, resources: ResourcesConfig, cluster: dict[str, float],
                   num_trials: int) -> int:
    """``max_concurrent_trials`` for the Tuner.

    Fixed cluster: as many trials as fit ``cluster`` (capped by ``sweep.max_concurrent_trials``
    when set); none fitting is a ResourceError with the numbers rather than a sweep whose
    trials wait forever. Autoscaling cluster: nodes that are not up yet are not in
    ``cluster``, so the configured cap is used as given.
    """
    configured = sweep.max_concurrent_trials
    if resources.autoscaling:
        require_cap_when_autoscaling(sweep, resources)
        return max(1, min(configured, num_trials))
    per_trial = trial_resources(resources, sweep.trial_driver_cpus)
    fit = trials_that_fit(per_trial, cluster)
    if fit < 1:
        need = ", ".join(f"{v:g} {k}" for k, v in per_trial.items())
        have = ", ".join(f"{float(cluster.get(k, 0)):g} {k}" for k in per_trial)
        raise ResourceError(
            f"sweep: one trial needs {need} (resources.num_workers {resources.num_workers} x "
            f"cpus_per_worker {resources.cpus_per_worker:g} + sweep.trial_driver_cpus "
            f"{sweep.trial_driver_cpus:g}) but the cluster has {have}; lower the per-trial "
            "resources")
    return max(1, min(fit, configured or fit, num_trials))


# --------------------------------------------------------------------- trial config (pure)


def trial_config(config: ExperimentConfig, point: dict) -> ExperimentConfig:
    """The base config with the point's culture and hyper-parameters. Checkpoints are per
    epoch (``save_steps=0``) so each Ray Train report is one epoch's result for ASHA."""
    p = normalise_point(point)
    tree = config.model_dump(mode="json")
    tree["data"]["culture"] = p["culture"]
    tree["sft"].update(learning_rate=p["learning_rate"], epochs=p["epochs"], save_steps=0)
    tree["lora"].update(r=p["lora_r"], alpha=p["lora_alpha"])
    return ExperimentConfig.model_validate(tree)


def with_absolute_paths(config: ExperimentConfig) -> ExperimentConfig:
    """Tune runs each trial with its trial folder as working directory, so relative paths
    (run.storage_path, data files, a local model) are resolved here, on the driver."""
    tree = config.model_dump(mode="json")
    tree["run"]["storage_path"] = str(config.run_dir.parent)
    for section, name in (("data", "swow_path"), ("data", "survey_path"), ("model", "path")):
        value = tree[section][name]
        if value and Path(value).expanduser().exists():
            tree[section][name] = str(Path(value).expanduser().resolve())
    return ExperimentConfig.model_validate(tree)


def changed_settings(before: dict, after: dict) -> list[str]:
    """Dotted names of the settings that differ between two config trees, ignoring the ones
    a resumed sweep may change (RUNTIME_ONLY)."""
    changed = []
    for section in sorted(set(before) | set(after)):
        old, new = before.get(section) or {}, after.get(section) or {}
        for key in sorted(set(old) | set(new)):
            if key not in RUNTIME_ONLY.get(section, ()) and old.get(key) != new.get(key):
                changed.append(f"{section}.{key}")
    return changed


def epoch_results(records: list[dict], metric: str) -> list[dict]:
    """Per-epoch results from a stage's metrics.jsonl (what Tune would have received): the
    records of each whole epoch merged, in epoch order, keeping epochs that have ``metric``."""
    by_epoch: dict[int, dict] = {}
    for record in records:
        epoch = record.get("epoch")
        if epoch is None or abs(epoch - round(epoch)) > 1e-3 or round(epoch) < 1:
            continue
        merged = by_epoch.setdefault(round(epoch), {})
        merged.update({k: v for k, v in record.items() if isinstance(v, (int, float))})
        merged["epoch"] = round(epoch)
    return [by_epoch[e] for e in sorted(by_epoch) if metric in by_epoch[e]]


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

    from culture_rl.tune.trial import PerCultureASHA, SweepProgress, SweepTrial

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
    from culture_rl.workflows.align_sft import TINY, run_pretrain

    if config.model.path == TINY:
        run_pretrain(config, data)


def run_sweep(config: ExperimentConfig) -> SweepResult:
    """Validate, plan the concurrency, pretrain the tiny base if needed, run (or resume) the
    Tuner, and write the per-culture best-configuration table and the plot."""
    import ray

    from culture_rl.distributed.cluster import connect
    from culture_rl.data.align_data import load_align_data

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
