"""The evaluation report of a run: ``report.md``, a self-contained ``report.html`` and the
figures in ``report_files/``, from ``<run dir>/eval/eval.json`` and the training runs'
``metrics.jsonl``.

Both documents are rendered (``eval/render.py``) from one list of sections; what they read and
how they tabulate is :mod:`culture_rl.eval.report_data`. Everything is built in memory, written
to a temporary folder inside the run directory and renamed into place, so a failure leaves no
half-written report.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from culture_rl.core.errors import DataError
from culture_rl.eval import plots
from culture_rl.eval.render import Code, Image, Section, Table, to_html, to_markdown
from culture_rl.eval.report_data import (Records, fmt, grid, load_eval, load_metrics,
                                         long_table, metrics_files, number)

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
                             grid([[m] for m in rec.models],
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
    return [v for v in map(number, values or []) if v is not None]


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
            points = [(number(i.get("distance_a")), number(i.get("distance_b")))
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
    columns = [("accuracy", [number(r["accuracy"]) for r in models.values()]),
               ("macro_f1", [number(r["macro_f1"]) for r in models.values()])]
    for subset in subsets:
        for metric in ("accuracy", "macro_f1"):
            columns.append((metric, [number(r.get("by_subset", {}).get(subset, {}).get(metric))
                                     for r in models.values()]))
    labels = [[CALM_LABELS.get(name, name.replace("no_", "w/o ").replace("_", "-")
                               .replace("moe", "MoE")),
               fmt(r.get("steps"))] for name, r in models.items()]
    header = ["model", "steps", "accuracy", "macro-F1",
              *(f"{s} {m}" for s in subsets for m in ("accuracy", "macro-F1"))]
    return section.add(text, Table(header, grid(labels, columns)),
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
            step = number(row.get("step"))
            for key, value in row.items():
                if step is not None and CURVES.fullmatch(key) and number(value) is not None:
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
