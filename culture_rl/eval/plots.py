"""The evaluation report's figures (see ``culture_rl.eval.report``), each returned as PNG bytes.

Figures are built as ``matplotlib.figure.Figure`` objects and rendered by the Agg canvas
directly, so nothing here needs a display, touches pyplot's global figure list or changes the
backend of a process (a notebook) that imports this module.
"""

from __future__ import annotations

import io
import math
from typing import Mapping, Sequence

DPI = 100
PANEL = (4.2, 3.2)  # inches per subplot
MAX_COLUMNS = 3


def _figure(panels: int, columns: int = MAX_COLUMNS, panel=PANEL):
    from matplotlib.figure import Figure

    columns = max(1, min(columns, panels))
    rows = math.ceil(panels / columns)
    fig = Figure(figsize=(panel[0] * columns, panel[1] * rows), dpi=DPI)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for extra in axes[panels:]:
        extra.set_visible(False)
    return fig, list(axes[:panels])


def _png(fig) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def association_bars(scores: Mapping[str, Mapping[str, Mapping[str, float]]],
                     metrics: Sequence[str]) -> bytes:
    """Grouped bars: one subplot per culture, groups = ``metrics`` (p@k), one bar per model.
    ``scores[culture][model][metric]``; missing values are left out."""
    fig, axes = _figure(len(scores))
    models = list(dict.fromkeys(m for per_model in scores.values() for m in per_model))
    width = 0.8 / max(len(models), 1)
    for ax, (culture, per_model) in zip(axes, scores.items()):
        for i, model in enumerate(models):
            values = per_model.get(model, {})
            xs = [j + (i - (len(models) - 1) / 2) * width for j, m in enumerate(metrics)
                  if values.get(m) is not None]
            ys = [values[m] for m in metrics if values.get(m) is not None]
            ax.bar(xs, ys, width, label=model)
        ax.set_xticks(range(len(metrics)), list(metrics))
        ax.set_ylim(0, 1)
        ax.set_title(culture)
        ax.set_ylabel("precision")
    axes[0].legend(fontsize="small")
    return _png(fig)


def norm_boxes(culture: str, boxes: Mapping[str, Mapping[str, Sequence[float]]]) -> bytes:
    """One subplot per norm (``boxes[norm][label]`` = per-cue medians; labels are "human" and
    the models), a box per label."""
    fig, axes = _figure(len(boxes), columns=len(boxes), panel=(3.4, 3.2))
    for ax, (norm, per_label) in zip(axes, boxes.items()):
        labels = [label for label, values in per_label.items() if values]
        if labels:
            ax.boxplot([per_label[label] for label in labels])
            ax.set_xticks(range(1, len(labels) + 1), labels, rotation=30)
        else:
            ax.text(0.5, 0.5, "no rated cues", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(norm)
    fig.suptitle(f"Per-cue medians of the answers' norms, {culture}")
    return _png(fig)


def js_heatmap(cultures: Sequence[str], models: Sequence[str],
               values: Sequence[Sequence[float | None]]) -> bytes:
    """Culture (rows) x model (columns) mean JS distance, each cell annotated."""
    import numpy as np

    matrix = np.array([[np.nan if v is None else v for v in row] for row in values], float)
    fig, (ax,) = _figure(1, panel=(1.6 + 1.3 * len(models), 1.2 + 0.6 * len(cultures)))
    image = ax.imshow(matrix, cmap="viridis_r", vmin=0, vmax=max(np.nanmax(matrix), 1e-9)
                      if np.isfinite(matrix).any() else 1, aspect="auto")
    ax.set_xticks(range(len(models)), list(models))
    ax.set_yticks(range(len(cultures)), list(cultures))
    middle = np.nanmean(matrix) if np.isfinite(matrix).any() else 0
    for (r, c), value in np.ndenumerate(matrix):
        text = "-" if np.isnan(value) else f"{value:.3f}"
        ax.text(c, r, text, ha="center", va="center",
                color="white" if np.isfinite(value) and value > middle else "black")
    ax.set_title("WVS: mean JS distance (lower is closer)")
    fig.colorbar(image, ax=ax)
    return _png(fig)


def tension_scatter(panels: Mapping[str, tuple[Sequence[str], Sequence[tuple[float, float]]]]
                    ) -> bytes:
    """One scatter per model: ``panels[model] = ((culture_a, culture_b), [(d_a, d_b), ...])``;
    x = distance to A, y = distance to B, the diagonal marks equal distance."""
    fig, axes = _figure(len(panels))
    for ax, (model, ((a, b), points)) in zip(axes, panels.items()):
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        top = max(xs + ys + [1e-9]) * 1.05
        ax.scatter(xs, ys, s=18)
        ax.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1)
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_xlabel(f"distance to {a}")
        ax.set_ylabel(f"distance to {b}")
        closer_b = sum(y < x for x, y in points)
        closer_a = sum(x < y for x, y in points)
        ax.set_title(f"{model}: {closer_a} closer to {a}, {closer_b} closer to {b}",
                     fontsize="medium")
    return _png(fig)


def training_curves(title: str, series: Mapping[str, tuple[Sequence[float], Sequence[float]]]
                    ) -> bytes:
    """One subplot per series (``series[key] = (steps, values)``) against the step."""
    fig, axes = _figure(len(series), panel=(4.0, 2.6))
    for ax, (key, (steps, values)) in zip(axes, series.items()):
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3)
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.suptitle(title)
    return _png(fig)
