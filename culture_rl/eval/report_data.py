"""What the evaluation report reads and how it tabulates: ``eval.json`` and the training runs'
``metrics.jsonl`` (checked, one-line DataErrors), the records indexed by (model, culture,
evaluation, metric, subset), and tables with the best value of each column in bold. The
report's sections are :mod:`culture_rl.eval.report`."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from culture_rl.core.errors import DataError
from culture_rl.data.tabular import jsonl_objects
from culture_rl.eval.render import Bold, Table

SCHEMA = 1  # of eval.json
STAGES = ("pretrain", "sft", "ppo")
HIGHER = re.compile(r"p@\d+|rho|accuracy|macro_f1|argmax_agree|cosine")
LOWER = re.compile(r"js|emd|kl_.*|gap_.*|parse_failure_rate")


# ------------------------------------------------------------------ reading
def load_eval(path: Path) -> dict:
    if not path.is_file():
        raise DataError("no evaluation results; run culture-rl eval first", path=path)
    try:
        data = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"not valid JSON: {error.msg}", path=path, line=error.lineno) from None
    if isinstance(data, dict) and data.get("schema", SCHEMA) != SCHEMA:
        raise DataError(f"schema {data['schema']!r} is not the schema {SCHEMA} this version "
                        "reads", path=path)
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise DataError("no 'records' list; not an evaluation result of culture-rl eval",
                        path=path)
    for i, record in enumerate(data["records"]):
        missing = [k for k in ("model", "culture", "evaluation", "metric", "value")
                   if not isinstance(record, dict) or k not in record]
        if missing:
            raise DataError(f"records[{i}] lacks {', '.join(missing)}", path=path)
    return data


def load_metrics(path: Path) -> list[dict]:
    """A training run's metrics.jsonl (empty while its first step is still running)."""
    return [row for _, row in jsonl_objects(path.read_text("utf-8"), path)]


def metrics_files(run_dir: Path) -> list[Path]:
    """Every training run's metrics.jsonl under the run folder, pipeline stages first."""
    found = [p for p in run_dir.rglob("metrics.jsonl")
             if p.relative_to(run_dir).parts[0] not in ("eval", "report_files")
             and not p.relative_to(run_dir).parts[0].startswith(".")]
    order = {stage: i for i, stage in enumerate(STAGES)}
    return sorted(found, key=lambda p: (order.get(p.relative_to(run_dir).parts[0], len(order)),
                                        p.as_posix()))


def number(value) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


class Records:
    def __init__(self, data: dict):
        self.by_key = {(r["model"], r["culture"], r["evaluation"], r["metric"],
                        r.get("subset", "all")): r for r in data["records"]}
        self.models = list(dict.fromkeys([*data.get("models", {}),
                                          *(r["model"] for r in data["records"])]))
        self.cultures = list(dict.fromkeys([*data.get("cultures", []),
                                            *(r["culture"] for r in data["records"])]))

    def value(self, model, culture, evaluation, metric, subset="all") -> float | None:
        record = self.by_key.get((model, culture, evaluation, metric, subset))
        return None if record is None else number(record["value"])

    def n(self, model, culture, evaluation, subset="all") -> int | None:
        return next((r["n"] for k, r in self.by_key.items() if k[:3] == (model, culture, evaluation)
                     and k[4] == subset and r.get("n") is not None), None)

    def has(self, evaluation, metric=None, culture=None, subset=None) -> bool:
        return any(k[2] == evaluation and metric in (None, k[3]) and culture in (None, k[1])
                   and subset in (None, k[4]) for k in self.by_key)

    def has_model(self, model, culture, evaluation) -> bool:
        return any(k[:3] == (model, culture, evaluation) for k in self.by_key)

    def subsets(self, evaluation) -> list[str]:
        return list(dict.fromkeys(k[4] for k in self.by_key if k[2] == evaluation))


# ------------------------------------------------------------------ tables
def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def bolden(metric: str, cells: list[float | None]) -> list[str]:
    """Formatted cells, the best (max or min, by ``metric``) in bold; no bold when the metric
    has no direction or all values are equal."""
    present = [v for v in cells if v is not None]
    best = None
    if len(set(present)) > 1:  # else nothing to tell apart
        best = max(present) if HIGHER.fullmatch(metric) else \
            min(present) if LOWER.fullmatch(metric) else None
    return [Bold(fmt(v)) if best is not None and v == best else fmt(v) for v in cells]


def grid(row_labels: list[list[str]], columns: list[tuple[str, list[float | None]]]
          ) -> list[list[str]]:
    """Table rows from per-column (metric, values), the best of each column in bold."""
    formatted = [bolden(metric, values) for metric, values in columns]
    return [labels + [col[i] for col in formatted] for i, labels in enumerate(row_labels)]


def long_table(rec: Records, evaluation: str, metrics, subsets=("all",)) -> Table | None:
    """Rows culture x model (x subset when several), one column per metric present plus n;
    the best value is bolded within each culture (and subset)."""
    metrics = [m for m in metrics if any(rec.has(evaluation, m, subset=s) for s in subsets)]
    if not metrics:
        return None
    lead = (["options"] if len(subsets) > 1 else []) + ["culture", "model"]
    rows = []
    for subset in subsets:
        for culture in rec.cultures:
            models = [m for m in rec.models if any(
                rec.value(m, culture, evaluation, x, subset) is not None for x in metrics)]
            if not models:
                continue
            label = [subset.removeprefix("options=")] if len(subsets) > 1 else []
            block = grid([label + [culture, m] for m in models],
                          [(x, [rec.value(m, culture, evaluation, x, subset) for m in models])
                           for x in metrics])
            for model, row in zip(models, block):
                rows.append(row + [fmt(rec.n(model, culture, evaluation, subset))])
    return Table(lead + list(metrics) + ["n"], rows)
