"""The quickstart: synthesise the world, pretrain the biased base, ALIGN SFT, ALIGN PPO, evaluate,
summarise.

Writes ``<run dir>/eval/<stage>.json`` per evaluated model and ``summary.json`` /
``summary.md``; every stage is resumable, so an interrupted demo picks up where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path

from culture_rl.config import ExperimentConfig, write_run_config
from culture_rl.workflows.align_data import AlignData, load_align_data
from culture_rl.workflows.align_ppo import run_ppo
from culture_rl.workflows.align_sft import run_pretrain, run_sft

SUMMARY_KEYS = ("p@1", "p@5", "p@10", "parse_failure_rate")
SURVEY_KEYS = ("js", "emd", "argmax_agree")


def evaluation_cues(config: ExperimentConfig, data: AlignData) -> list[str]:
    split = config.eval.split
    cues = data.split["val"] + data.split["test"] if split == "heldout" else data.split[split]
    return cues[:config.eval.max_cues] if config.eval.max_cues else cues


def evaluate_stage(config: ExperimentConfig, data: AlignData, model_dir: str | Path,
                   label: str) -> dict:
    """Evaluate one exported model on the driver; cached in ``eval/<label>.json``."""
    from culture_rl.eval.evaluate import evaluate_model
    from culture_rl.models.loading import load_model, load_tokenizer

    from culture_rl.workflows.align_ppo import eval_ranking_prompts

    out = config.run_dir / "eval" / f"{label}.json"
    if out.is_file():
        cached = json.loads(out.read_text("utf-8"))
        # Same label but another model, or made before ranking was measured: evaluate anew.
        if cached.get("model_dir") == str(model_dir) and "ranking" in cached:
            export_evaluation(config, cached, label)
            return cached
    print(f"[eval] {label}: {model_dir}", flush=True)
    model = load_model(model_dir, config.model.dtype, config.model.trust_remote_code)
    tokenizer = load_tokenizer(model_dir, config.model.trust_remote_code)
    report = evaluate_model(model, tokenizer, norms_by_culture=data.norms_by_culture,
                            cues=evaluation_cues(config, data), survey=data.survey,
                            k_values=config.eval.k_values, language=config.data.language,
                            max_new_tokens=config.eval.max_new_tokens,
                            batch_size=config.eval.batch_size, label=label,
                            ranking=eval_ranking_prompts(config, data),
                            ranking_max_new_tokens=config.rollout.max_new_tokens)
    report["model_dir"] = str(model_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False), "utf-8")
    tmp.rename(out)
    export_evaluation(config, report, label)
    return report


def evaluation_values(report: dict) -> dict[str, float]:
    """An evaluation report as ``evaluation_<metric>/<culture>`` numbers (and
    ``evaluation_ranking_rho`` for the target culture's ranking task)."""
    values = {}
    for section in ("associations", "survey"):
        for culture, scores in report.get(section, {}).items():
            values.update({f"evaluation_{key}/{culture}": value for key, value in scores.items()
                           if not key.startswith("n_")})
    ranking = report.get("ranking", {})
    values.update({f"evaluation_ranking_{key}": ranking[key]
                   for key in ("rho", "parse_failure_rate") if key in ranking})
    return values


def export_evaluation(config: ExperimentConfig, report: dict, label: str) -> None:
    from culture_rl.distributed.metrics import RayGauges

    RayGauges(run=config.run.name, workflow="eval", model=label).set(evaluation_values(report))


def stage_summary(report: dict, target: str) -> dict:
    """The flat per-stage numbers of summary.json (target culture), plus P@5 per culture."""
    assoc = report["associations"].get(target, {})
    row = {key: round(assoc[key], 4) for key in SUMMARY_KEYS if key in assoc}
    survey = report["survey"].get(target, {})
    row.update({f"wvs_{key}": round(survey[key], 4) for key in SURVEY_KEYS if key in survey})
    row["p@5_by_culture"] = {c: round(s["p@5"], 4) for c, s in report["associations"].items()
                             if "p@5" in s}
    ranking = report.get("ranking", {})
    if "rho" in ranking:
        row["ranking_rho"] = round(ranking["rho"], 4)
        row["ranking_parse_failure_rate"] = round(ranking["parse_failure_rate"], 4)
    row["n_cues"] = assoc.get("n_cues", 0)
    row["n_questions"] = survey.get("n_questions", 0)
    return row


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
    return "\n".join(lines) + "\n"


def run_quickstart(config: ExperimentConfig) -> dict:
    data = load_align_data(config)
    write_run_config(config)
    print(f"[quickstart] world written to {config.run_dir / 'world'}; target culture "
          f"{data.target_culture}; {len(data.split['train'])} training cues", flush=True)
    base = run_pretrain(config, data)
    sft = run_sft(config, data)
    ppo = run_ppo(config, data)
    reports = {"base": evaluate_stage(config, data, base.model_dir, "base"),
               "sft": evaluate_stage(config, data, sft.model_dir, "sft"),
               "ppo": evaluate_stage(config, data, ppo.model_dir, "ppo")}
    summary = {"target_culture": data.target_culture,
               "stages": {name: stage_summary(r, data.target_culture)
                          for name, r in reports.items()},
               "samples": {name: r["samples"] for name, r in reports.items()}}
    (config.run_dir / "summary.json").write_text(json.dumps(summary, indent=2,
                                                            ensure_ascii=False), "utf-8")
    (config.run_dir / "summary.md").write_text(render_markdown(summary), "utf-8")
    return summary
