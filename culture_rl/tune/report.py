"""What a sweep leaves behind: the best configuration per culture (CSV + Markdown), every trial
(CSV) and a plot of the metric against each hyper-parameter per culture.

A *row* is one trial: its search point (culture + :data:`HYPER_PARAMETERS`), ``trial_id``,
``status`` (``finished``, ``stopped early`` or ``error``), ``epochs_run`` and the metric's last
reported value (None when the trial never reported one).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

HYPER_PARAMETERS = ("learning_rate", "lora_r", "lora_alpha", "epochs")
LOG_SCALE = {"learning_rate"}
TRIAL_COLUMNS = ("trial_id", "culture", *HYPER_PARAMETERS, "status", "epochs_run")
ERROR = "error"


def _has_value(row: dict, metric: str) -> bool:
    value = row.get(metric)
    return row.get("status") != ERROR and value is not None and not math.isnan(value)


def best_per_culture(rows: list[dict], metric: str, mode: str) -> list[dict]:
    """One row per culture (in the order cultures first appear): the trial with the best last
    value of ``metric``; ties go to the earlier trial. Errored trials never win; a culture
    whose trials all failed has no row."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
    sign = 1.0 if mode == "max" else -1.0
    best: dict[str, dict] = {}
    for row in rows:
        if not _has_value(row, metric):
            continue
        current = best.get(row["culture"])
        if current is None or sign * row[metric] > sign * current[metric]:
            best[row["culture"]] = row
    order = list(dict.fromkeys(row["culture"] for row in rows))
    return [best[culture] for culture in order if culture in best]


def best_columns(metric: str) -> list[str]:
    return ["culture", *HYPER_PARAMETERS, metric, "trial_id"]


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def render_markdown(best: list[dict], metric: str) -> str:
    columns = best_columns(metric)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_format(row.get(c)) for c in columns) + " |" for row in best]
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def varied_hyper_parameters(rows: list[dict]) -> list[str]:
    """The hyper-parameters that take more than one value (all of them when none does)."""
    varied = [name for name in HYPER_PARAMETERS if len({row[name] for row in rows}) > 1]
    return varied or list(HYPER_PARAMETERS)


def plot_sweep(rows: list[dict], metric: str, mode: str, path: Path) -> Path:
    """One panel per varied hyper-parameter: every trial's last metric as a dot, and per
    culture a line through the best value at each setting (the others marginalised)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training nodes
    import matplotlib.pyplot as plt

    scored = [row for row in rows if _has_value(row, metric)]
    names = varied_hyper_parameters(rows)
    cultures = list(dict.fromkeys(row["culture"] for row in rows))
    pick = max if mode == "max" else min
    fig, axes = plt.subplots(1, len(names), figsize=(max(6.0, 4.2 * len(names)), 3.8),
                             squeeze=False)
    for ax, name in zip(axes[0], names):
        for index, culture in enumerate(cultures):
            mine = [row for row in scored if row["culture"] == culture]
            color = f"C{index % 10}"
            ax.scatter([row[name] for row in mine], [row[metric] for row in mine],
                       color=color, alpha=0.5, s=18)
            settings = sorted({row[name] for row in mine})
            ax.plot(settings, [pick(r[metric] for r in mine if r[name] == s) for s in settings],
                    color=color, marker="o", label=culture)
        if name in LOG_SCALE:
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(title="culture", fontsize="small")
    fig.suptitle(f"{metric} per trial (dots); best ({mode}) per setting and culture (lines)",
                 fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(sweep_dir: Path, rows: list[dict], metric: str, mode: str
                 ) -> tuple[list[dict], dict[str, Path]]:
    """Write best_configs.csv/.md, trials.csv and sweep.png; return (best rows, files)."""
    best = best_per_culture(rows, metric, mode)
    files = {
        "best_csv": write_csv(sweep_dir / "best_configs.csv", best, best_columns(metric)),
        "trials_csv": write_csv(sweep_dir / "trials.csv", rows, [*TRIAL_COLUMNS, metric]),
    }
    files["best_md"] = sweep_dir / "best_configs.md"
    files["best_md"].write_text(f"# Best configuration per culture ({metric}, {mode})\n\n"
                                + render_markdown(best, metric) + "\n", "utf-8")
    files["plot"] = plot_sweep(rows, metric, mode, sweep_dir / "sweep.png")
    return best, files
