"""The quickstart: synthesise the world, pretrain the biased base, ALIGN SFT, ALIGN PPO, CALM
(unless ``calm.demo`` is false), evaluate, summarise, report.

With a real model (``model.path`` other than ``tiny``) the base is that model as it is, not
pretrained; with ``world.base_associations`` set, its own associations are elicited first
(``culture-rl elicit``) and the world's dominant culture says what it says
(configs/quickstart_smollm2.yaml).

The CALM stage (:func:`culture_rl.methods.calm.train.run_calm` on the demo's base model: CALM, the
LoRA + linear-head baseline on the same budget and one ablation per module, ``<run>/calm/``)
follows PPO. Then the models (base, SFT, PPO and the CALM export, its identity state injected)
go through the evaluation harness (``eval/eval.json``, ``eval/eval.csv``).
Then ``summary.json`` / ``summary.md`` (the target culture's numbers per stage, and the CALM
table) and the report (``report.md``, ``report.html``) are written; every stage is resumable
(and evaluations cached), so an interrupted demo picks up where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path

from culture_rl.config import ExperimentConfig, write_run_config
from culture_rl.data.align_data import load_align_data
from culture_rl.methods.align.ppo import run_ppo
from culture_rl.methods.align.sft import TINY, base_model_path, run_pretrain, run_sft
from culture_rl.methods.calm.train import run_calm
from culture_rl.methods.elicit import elicit_base_associations
from culture_rl.eval.harness import lookup, plan_evaluation, run_evaluation
from culture_rl.eval.report import write_report

SUMMARY_KEYS = ("p@1", "p@5", "p@10", "parse_failure_rate")
SURVEY_KEYS = ("js", "emd", "argmax_agree")


def stage_summary(results: dict, model: str, target: str) -> dict:
    """The flat per-stage numbers of summary.json (target culture), plus P@5 per culture."""
    def value(evaluation: str, metric: str, culture: str = target):
        return lookup(results, model, culture, evaluation, metric)

    row = {key: round(v, 4) for key in SUMMARY_KEYS
           if (v := value("associations", key)) is not None}
    row.update({f"wvs_{key}": round(v, 4) for key in SURVEY_KEYS
                if (v := value("wvs", key)) is not None})
    row["p@5_by_culture"] = {c: round(v, 4) for c in results["cultures"]
                             if (v := value("associations", "p@5", c)) is not None}
    if (rho := value("ranking", "rho")) is not None:
        row["ranking_rho"] = round(rho, 4)
        row["ranking_parse_failure_rate"] = round(value("ranking", "parse_failure_rate"), 4)
    counts = {(r["evaluation"], r["culture"]): r["n"] for r in results["records"]
              if r["model"] == model and r["subset"] == "all"}
    row["n_cues"] = counts.get(("associations", target), 0)
    row["n_questions"] = counts.get(("wvs", target), 0)
    return row


def render_results(results: dict) -> str:
    """The target culture's main numbers per model, for the terminal."""
    target = results["target_culture"]
    columns = [("associations", "p@5"), ("associations", "parse_failure_rate"),
               ("ranking", "rho"), ("wvs", "js"), ("value_classification", "accuracy")]
    columns = [c for c in columns if any((r["evaluation"], r["metric"]) == c
                                         for r in results["records"])]
    lines = [f"Evaluation against {target} (all cultures: eval/eval.csv)", "",
             "| model | " + " | ".join(f"{e} {m}" for e, m in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for model in results["models"]:
        cells = []
        for evaluation, metric in columns:
            v = lookup(results, model, target, evaluation, metric)
            cells.append("-" if v is None else f"{v:.3f}")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def calm_summary(results: dict) -> dict:
    """summary.json's ``calm`` part: held-out accuracy / macro-F1 (overall and per subset) of
    CALM, the baseline and each ablation."""
    models = {}
    for name, r in results["models"].items():
        row = {"steps": r.get("steps"), "accuracy": round(r["accuracy"], 4),
               "macro_f1": round(r["macro_f1"], 4)}
        for subset, part in r.get("by_subset", {}).items():
            row[f"{subset}_accuracy"] = round(part["accuracy"], 4)
            row[f"{subset}_macro_f1"] = round(part["macro_f1"], 4)
        models[name] = row
    return {"task": results.get("task"), "n_heldout": results["n_heldout"],
            "labels": results["labels"], "models": models}


def render_calm_markdown(calm: dict) -> list[str]:
    subsets = sorted({k[:-len("_accuracy")] for row in calm["models"].values() for k in row
                      if k.endswith("_accuracy")})
    columns = ["accuracy", "macro_f1", *(f"{s}_{m}" for s in subsets
                                         for m in ("accuracy", "macro_f1"))]
    lines = ["", f"CALM value identification ({calm['task']} task, {calm['n_heldout']} "
             "held-out statements; details: calm/report.md):", "",
             "| model | steps | " + " | ".join(columns) + " |",
             "|---" * (len(columns) + 2) + "|"]
    for name, row in calm["models"].items():
        lines.append(f"| {name} | {row.get('steps', '-')} | "
                     + " | ".join(f"{row[c]:.3f}" if c in row else "-" for c in columns) + " |")
    return lines


def render_markdown(summary: dict) -> str:
    stages = summary["stages"]
    columns = ["p@1", "p@5", "p@10", "parse_failure_rate", "ranking_rho",
               "ranking_parse_failure_rate", "wvs_js", "wvs_emd", "wvs_argmax_agree"]
    lines = [f"# Quickstart summary: target culture {summary['target_culture']}", "",
             "| stage | " + " | ".join(columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for name, row in stages.items():
        cells = [f"{row[c]:.3f}" if c in row else "-" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "P@k: held-out cues, target culture's human associations (higher is better). "
              "ranking_rho: mean Spearman rho of the model's ranking of held-out cues' "
              "associations against the target culture's frequency order (ALIGN's PPO reward; "
              "higher is better). "
              "wvs_js / wvs_emd: distance of the model's survey answer distribution to the target "
              "culture's (lower is better).", ""]
    cultures = sorted({c for row in stages.values() for c in row["p@5_by_culture"]})
    lines += ["P@5 against each culture's norms:", "",
              "| stage | " + " | ".join(cultures) + " |", "|---" * (len(cultures) + 1) + "|"]
    for name, row in stages.items():
        lines.append(f"| {name} | " + " | ".join(f"{row['p@5_by_culture'].get(c, 0):.3f}"
                                                  for c in cultures) + " |")
    if "samples" in summary:
        lines += ["", "Sample answers (first held-out cues):", ""]
        for name, samples in summary["samples"].items():
            for sample in samples[:3]:
                lines.append(f"- {name}, `{sample['cue']}`: {sample['answer'][:80]}")
    if summary.get("calm"):
        lines += render_calm_markdown(summary["calm"])
    return "\n".join(lines) + "\n"


def run_quickstart(config: ExperimentConfig) -> dict:
    if config.world.base_associations is not None:  # the world reads them: elicit first
        # ... after the data settings are checked (without the file), so a bad data.culture
        # is one line now, not after minutes of generation.
        load_align_data(config.model_copy(update={"world": config.world.model_copy(
            update={"base_associations": None})}), write_world=False)
        elicited = elicit_base_associations(config)
        print(f"[quickstart] the base model's own associations: {elicited.path} "
              f"({elicited.cues_with_words} of {elicited.cues} cues named)", flush=True)
    data = load_align_data(config)
    write_run_config(config)
    print(f"[quickstart] world written to {config.run_dir / 'world'}; target culture "
          f"{data.target_culture}; {len(data.split['train'])} training cues", flush=True)
    # The tiny base is pretrained on the world's corpus; a real model is the base as it is.
    base = (str(run_pretrain(config, data).model_dir) if config.model.path == TINY
            else base_model_path(config))
    sft = run_sft(config, data)
    ppo = run_ppo(config, data)
    models = {"base": base, "sft": str(sft.model_dir), "ppo": str(ppo.model_dir)}
    calm = None
    if config.calm.demo:
        print("[quickstart] CALM: CALM against the LoRA baseline on the same budget, and each "
              "module off in turn (calm.demo=false skips this stage)", flush=True)
        calm = run_calm(config, data)
        # The CALM model is evaluated like the others (P@k, WVS, ...), identity state injected.
        models["calm"] = str(config.run_dir / "calm" / "export")
    results = run_evaluation(config, plan_evaluation(config, data, models),
                             command=_quickstart_command(config))
    summary = {"target_culture": data.target_culture,
               "stages": {name: stage_summary(results, name, data.target_culture)
                          for name in models},
               "samples": {name: results["details"][name].get("samples", [])
                           for name in models}}
    if calm is not None:
        summary["calm"] = calm_summary(calm)
    (config.run_dir / "summary.json").write_text(json.dumps(summary, indent=2,
                                                            ensure_ascii=False), "utf-8")
    (config.run_dir / "summary.md").write_text(render_markdown(summary), "utf-8")
    summary["report"] = str(write_report(config.run_dir)["html"])
    return summary


def _quickstart_command(config: ExperimentConfig) -> str:
    import shlex
    import sys

    argv = sys.argv[1:] if Path(sys.argv[0]).name == "culture-rl" else ["demo"]
    return shlex.join(["culture-rl", *argv]) + f"  # run folder {config.run_dir}"
