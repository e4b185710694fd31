"""The evaluation report of a run: ``report.md``, a self-contained ``report.html`` and the
figures in ``report_files/``, from ``<run dir>/eval/eval.json`` and the training runs'
``metrics.jsonl``.

Both documents are rendered (``eval/render.py``) from one list of sections. Everything is built in memory, written to a temporary folder
inside the run directory and renamed into place, so a failure leaves no half-written report.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from culture_rl.errors import DataError
from culture_rl.eval import plots
from culture_rl.eval.render import Bold, Code, Image, Section, Table, to_html, to_markdown

SCHEMA = 1  # of eval.json
NOT_EVALUATED = "not evaluated"
P_AT_K = ("p@1", "p@3", "p@5", "p@10")
NORMS = ("valence", "arousal", "dominance", "concreteness")
WVS = ("js", "emd", "kl_model_culture", "kl_culture_model", "cosine", "argmax_agree")
SUMMARY = (("associations", "p@5"), ("wvs", "js"), ("ranking", "rho"),
           ("value_classification", "accuracy"))
# metrics.jsonl series worth a curve: the SFT logger's (loss, eval_loss, eval_p@k) and the PPO
# controller's (reward_mean, kl, kl_coef, policy_loss, value_loss, eval_ranking_rho).
CURVES = re.compile(r"loss|eval_loss|eval_p@\d+|reward_mean|kl|kl_coef|policy_loss|value_loss"
                    r"|eval_ranking_rho")
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
    rows = []
    for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"not a JSON record: {error.msg}", path=path, line=number) from None
        if not isinstance(row, dict):
            raise DataError("not a JSON object", path=path, line=number)
        rows.append(row)
    return rows


def metrics_files(run_dir: Path) -> list[Path]:
    """Every training run's metrics.jsonl under the run folder, pipeline stages first."""
    found = [p for p in run_dir.rglob("metrics.jsonl")
             if p.relative_to(run_dir).parts[0] not in ("eval", "report_files")
             and not p.relative_to(run_dir).parts[0].startswith(".")]
    order = {stage: i for i, stage in enumerate(STAGES)}
    return sorted(found, key=lambda p: (order.get(p.relative_to(run_dir).parts[0], len(order)),
                                        p.as_posix()))


def _number(value) -> float | None:
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
        return None if record is None else _number(record["value"])

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


def _bolden(metric: str, cells: list[float | None]) -> list[str]:
    """Formatted cells, the best (max or min, by ``metric``) in bold; no bold when the metric
    has no direction or all values are equal."""
    present = [v for v in cells if v is not None]
    best = None
    if len(set(present)) > 1:  # else nothing to tell apart
        best = max(present) if HIGHER.fullmatch(metric) else \
            min(present) if LOWER.fullmatch(metric) else None
    return [Bold(fmt(v)) if best is not None and v == best else fmt(v) for v in cells]


def _grid(row_labels: list[list[str]], columns: list[tuple[str, list[float | None]]]
          ) -> list[list[str]]:
    """Table rows from per-column (metric, values), the best of each column in bold."""
    formatted = [_bolden(metric, values) for metric, values in columns]
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
            block = _grid([label + [culture, m] for m in models],
                          [(x, [rec.value(m, culture, evaluation, x, subset) for m in models])
                           for x in metrics])
            for model, row in zip(models, block):
                rows.append(row + [fmt(rec.n(model, culture, evaluation, subset))])
    return Table(lead + list(metrics) + ["n"], rows)


# ------------------------------------------------------------------ sections
def summary(rec: Records, data: dict) -> Section:
    section = Section("Summary")
    columns = [(c, e, m) for c in rec.cultures for e, m in SUMMARY if rec.has(e, m, c, "all")]
    if not columns:
        return section.add(NOT_EVALUATED)
    target = data.get("target_culture")
    section.add(f"Run {data.get('run', '?')}; target culture {target or '-'}. Best value of "
                "each column in bold (highest P@5, rho and accuracy; lowest JS distance).")
    return section.add(Table(["model"] + [f"{c} {m}" for c, _, m in columns],
                             _grid([[m] for m in rec.models],
                                   [(m, [rec.value(x, c, e, m) for x in rec.models])
                                    for c, e, m in columns])))


def associations(rec: Records) -> Section:
    section = Section("Associations (P@k)")
    ks = [k for k in P_AT_K if rec.has("associations", k)]
    table = long_table(rec, "associations", [*ks, "parse_failure_rate"])
    if table is None:
        return section.add(NOT_EVALUATED)
    if ks:
        scores = {c: {m: {k: rec.value(m, c, "associations", k) for k in ks} for m in rec.models}
                  for c in rec.cultures if rec.has("associations", culture=c)}
        section.add(Image("associations", plots.association_bars(scores, ks),
                          "P@k of the association answers per culture and model"))
    return section.add(table)


def lexical_norms(rec: Records, data: dict) -> Section:
    section = Section("Lexical norms")
    details = {m: d["lexical_norms"] for m, d in data.get("details", {}).items()
               if isinstance(d, dict) and d.get("lexical_norms")}
    comparisons = [c for c in data.get("comparisons", [])
                   if c.get("evaluation", "lexical_norms") == "lexical_norms"]
    if not details and not rec.has("lexical_norms") and not comparisons:
        return section.add(NOT_EVALUATED)
    if details:
        candidates = [data.get("target_culture"), *rec.cultures, *(c for d in details.values()
                                                                    for c in d)]
        culture = next(c for c in candidates if any(c in d for d in details.values()))
        per_culture = {m: d[culture] for m, d in details.items() if culture in d}
        human = next((d.get("human", {}) for d in per_culture.values() if d.get("human")), {})
        boxes = {norm: {"human": _clean(human.get(norm)),
                        **{m: _clean(d.get("model", {}).get(norm))
                           for m, d in per_culture.items()}} for norm in NORMS}
        section.add(Image("lexical_norms", plots.norm_boxes(culture, boxes),
                          f"per-cue medians of the norms of the answers, {culture}"))
    if rec.has("lexical_norms"):
        section.add("Medians over cues of the answers' norms (human: the human associations).")
        rows = []
        for culture in rec.cultures:
            models = [m for m in rec.models if rec.has_model(m, culture, "lexical_norms")]
            if not models:
                continue
            human = [next((v for m in models if (v := rec.value(
                m, culture, "lexical_norms", f"human_median_{n}")) is not None), None)
                for n in NORMS]
            rows.append([culture, "human", *map(fmt, human), "-", "-"])
            rows.extend([culture, m, *(fmt(rec.value(m, culture, "lexical_norms", x)) for x in
                                       [*(f"median_{n}" for n in NORMS), "coverage",
                                        "concrete_share"])] for m in models)
        section.add(Table(["culture", "model", *NORMS, "coverage", "concrete_share"], rows))
        gaps = long_table(rec, "lexical_norms", [f"gap_{n}" for n in NORMS])
        if gaps is not None:
            section.add("Median over cues of |model - human| (lower is closer).", gaps)
        tests = long_table(rec, "lexical_norms", [f"p_vs_human_{n}" for n in NORMS])
        if tests is not None:
            section.add("Paired Wilcoxon signed-rank p-values, model against human, over "
                        "cues (small: the model's answers differ from the human ones).", tests)
    if comparisons:
        keys = ["culture", "norm", "model_a", "model_b", "median_gap_a", "median_gap_b",
                "closer", "p_value", "n"]
        section.add("Paired Wilcoxon signed-rank tests of the per-cue gaps.",
                    Table(keys, [[fmt(c.get(k)) for k in keys] for c in comparisons]))
    return section


def _clean(values) -> list[float]:
    return [v for v in map(_number, values or []) if v is not None]


def wvs(rec: Records) -> Section:
    section = Section("World Values Survey")
    if not rec.has("wvs"):
        return section.add(NOT_EVALUATED)
    cultures = [c for c in rec.cultures if rec.has("wvs", "js", c, "all")]
    if cultures:
        matrix = [[rec.value(m, c, "wvs", "js") for m in rec.models] for c in cultures]
        section.add(Image("wvs_js", plots.js_heatmap(cultures, rec.models, matrix),
                          "mean JS distance per culture and model"))
    overall = long_table(rec, "wvs", WVS)
    if overall is not None and overall.rows:
        section.add("All questions.", overall)
    options = sorted((s for s in rec.subsets("wvs") if s.startswith("options=")),
                     key=lambda s: (len(s), s))
    if options:
        section.add("By number of answer options.", long_table(rec, "wvs", WVS, subsets=options))
    return section


def high_tension(rec: Records, data: dict) -> Section:
    section = Section("High-tension items")
    panels = {}
    for model, detail in data.get("details", {}).items():
        info = detail.get("high_tension") if isinstance(detail, dict) else None
        if info and info.get("items"):
            points = [(_number(i.get("distance_a")), _number(i.get("distance_b")))
                      for i in info["items"]]
            panels[model] = (info.get("pair", ["A", "B"]),
                             [p for p in points if None not in p])
    if not panels and not rec.has("high_tension"):
        return section.add(NOT_EVALUATED)
    section.add("Items on which the two cultures differ most; below the diagonal the model's "
                "answers are closer to the second culture.")
    if panels:
        section.add(Image("high_tension", plots.tension_scatter(panels),
                          "distance of each item's answers to the two cultures, per model"))
    pairs = [s for s in rec.subsets("high_tension") if "|" in s]
    rows = []
    for pair in pairs:
        a, b = pair.split("|", 1)
        for model in rec.models:
            counts = [rec.value(model, c, "high_tension", "items_closer", pair) for c in (a, b)]
            if counts != [None, None]:
                n = rec.n(model, a, "high_tension", pair) or rec.n(model, b, "high_tension", pair)
                rows.append([pair, model, *(fmt(int(c)) if c is not None else "-"
                                            for c in counts), fmt(n)])
    if rows:
        section.add(Table(["pair", "model", "closer to first", "closer to second", "n"], rows))
    return section


def simple(heading: str, rec: Records, evaluation: str, metrics) -> Section:
    table = long_table(rec, evaluation, metrics)
    return Section(heading).add(table if table is not None else NOT_EVALUATED)


CALM_LABELS = {"calm": "CALM", "baseline": "baseline (LoRA + linear head)",
               "calm_short": "CALM, ablation budget"}


def calm_comparison(path: Path) -> Section:
    """The CALM comparison of ``<run>/calm/results.json`` (culture-rl calm, or the demo's CALM
    stage): held-out value identification of CALM, the baseline and each ablation."""
    try:
        data = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"not valid JSON: {error.msg}", path=path, line=error.lineno) from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict) or not all(
            isinstance(r, dict) and "accuracy" in r and "macro_f1" in r for r in models.values()):
        raise DataError("no 'models' with accuracy and macro_f1; not a result of culture-rl "
                        "calm", path=path)
    section = Section("CALM")
    subsets = list(dict.fromkeys(k for r in models.values() for k in r.get("by_subset", {})))
    task = data.get("task") or "statements"
    budget = ("trained for the ablation budget, like 'CALM, ablation budget'"
              if "calm_short" in models else "on CALM's budget")
    text = (f"Held-out value identification ({fmt(data.get('n_heldout'))} statements, "
            f"{task} task): CALM, the baseline (the same LoRA, data and budget, every CALM "
            "module off: a linear head on the pooled hidden states) and each module switched "
            f"off in turn (w/o ..., {budget}). Best value of each column in bold.")
    if task == "culture_dependent":
        text += (" 'seen': (act, culture) pairs trained on, in wording training never shows; "
                 "'unseen': the act's meaning in that culture was never trained (it has another "
                 "meaning in the other cultures).")
    columns = [("accuracy", [_number(r["accuracy"]) for r in models.values()]),
               ("macro_f1", [_number(r["macro_f1"]) for r in models.values()])]
    for subset in subsets:
        for metric in ("accuracy", "macro_f1"):
            columns.append((metric, [_number(r.get("by_subset", {}).get(subset, {}).get(metric))
                                     for r in models.values()]))
    labels = [[CALM_LABELS.get(name, name.replace("no_", "w/o ").replace("_", "-")
                               .replace("moe", "MoE")),
               fmt(r.get("steps"))] for name, r in models.items()]
    header = ["model", "steps", "accuracy", "macro-F1",
              *(f"{s} {m}" for s in subsets for m in ("accuracy", "macro-F1"))]
    return section.add(text, Table(header, _grid(labels, columns)),
                       f"Results: {path}; learning curves and MoE routing per culture: "
                       f"{path.with_name('report.md')}")


def training_curves(run_dir: Path, files: list[Path]) -> tuple[Section, list[tuple]]:
    section = Section("Training curves")
    if not files:
        return section.add(f"{NOT_EVALUATED}: no metrics.jsonl under the run folder"), []
    runs = []
    for path in files:
        folder = path.parent.relative_to(run_dir).as_posix() or "."
        series: dict[str, tuple[list, list]] = {}
        for row in load_metrics(path):
            step = _number(row.get("step"))
            for key, value in row.items():
                if step is not None and CURVES.fullmatch(key) and _number(value) is not None:
                    steps, values = series.setdefault(key, ([], []))
                    steps.append(step)
                    values.append(float(value))
        runs.append((folder, path))
        if not series:
            section.add(f"{folder}: no plottable series in {path.name}")
            continue
        name = "training_" + (re.sub(r"[^A-Za-z0-9]+", "_", folder).strip("_") or "run")
        while any(isinstance(b, Image) and b.name == name for b in section.blocks):
            name += "_"
        section.add(Image(name, plots.training_curves(folder, series),
                          f"training curves of {folder}"))
    return section, runs


def provenance(run_dir: Path, eval_path: Path, data: dict, runs: list[tuple]) -> Section:
    section = Section("Provenance")
    section.add(f"Evaluation results: {eval_path}", f"Evaluated: {data.get('created', '-')}; "
                f"report written: {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
    section.add("Command:", Code(data.get("command") or "-", "bash"))
    if data.get("config_yaml"):
        section.add(Code(data["config_yaml"], "yaml", summary="Evaluation config"))
    models = data.get("models", {})
    if models:
        section.add(Table(["model", "path", "seconds"],
                          [[m, fmt(i.get("path")), fmt(i.get("seconds"))]
                           for m, i in models.items() if isinstance(i, dict)]))
    if runs:
        section.add(Table(["training run", "metrics", "config"],
                          [[folder, str(path), str(_config_of(path.parent, run_dir) or "-")]
                           for folder, path in runs]))
    return section


def _config_of(folder: Path, run_dir: Path) -> Path | None:
    """The nearest config.yaml from a training run's folder up to the run folder."""
    for candidate in [folder, *folder.parents]:
        if (candidate / "config.yaml").is_file():
            return candidate / "config.yaml"
        if candidate == run_dir:
            return None
    return None


# ------------------------------------------------------------------ entry point
def build_sections(run_dir: Path) -> tuple[str, list[Section]]:
    eval_path = run_dir / "eval" / "eval.json"
    data = load_eval(eval_path)
    rec = Records(data)
    curves, runs = training_curves(run_dir, metrics_files(run_dir))
    sections = [summary(rec, data), associations(rec), lexical_norms(rec, data), wvs(rec),
                high_tension(rec, data),
                simple("Value classification", rec, "value_classification",
                       ["accuracy", "macro_f1"]),
                simple("Ranking reward", rec, "ranking", ["rho", "parse_failure_rate"]),
                *([calm_comparison(run_dir / "calm" / "results.json")]
                  if (run_dir / "calm" / "results.json").is_file() else []),
                curves, provenance(run_dir, eval_path, data, runs)]
    return f"Evaluation report: {data.get('run') or run_dir.name}", sections


def write_report(run_dir: Path) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and ``report_files/`` into ``run_dir``; raises
    DataError (nothing written) when eval.json is missing or a data file is malformed."""
    run_dir = Path(run_dir)
    title, sections = build_sections(run_dir)
    images = [b for s in sections for b in s.blocks if isinstance(b, Image)]
    targets = {"md": run_dir / "report.md", "html": run_dir / "report.html",
               "images": run_dir / "report_files"}
    staging = Path(tempfile.mkdtemp(prefix=".report-", dir=run_dir))
    try:
        (staging / "report_files").mkdir()
        for image in images:
            (staging / "report_files" / f"{image.name}.png").write_bytes(image.png)
        (staging / "report.md").write_text(to_markdown(title, sections), "utf-8")
        (staging / "report.html").write_text(to_html(title, sections), "utf-8")
        if targets["images"].exists():
            os.replace(targets["images"], staging / "previous_files")
        os.replace(staging / "report_files", targets["images"])
        os.replace(staging / "report.md", targets["md"])
        os.replace(staging / "report.html", targets["html"])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return targets
