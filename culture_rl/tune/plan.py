"""The pure parts of a sweep: its search space, trial ids and names, how many trials fit at
once, and each trial's config. No Ray here; the driver is :mod:`culture_rl.tune.sweep`, the
Ray classes :mod:`culture_rl.tune.trial`."""

from __future__ import annotations

import math
from pathlib import Path

from culture_rl.config import ExperimentConfig, ResourcesConfig, SweepConfig
from culture_rl.core.errors import ConfigError, ResourceError
from culture_rl.tune.report import HYPER_PARAMETERS

# Settings that may change between a sweep and its resumption. Everything else is fixed: a
# restored Tuner keeps its search space, scheduler and concurrency.
RUNTIME_ONLY = {"resources": ("address",)}


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
