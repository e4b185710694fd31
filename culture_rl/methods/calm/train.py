"""`culture-rl calm`: CALM training, its held-out evaluation, the baseline and the ablations.

Data (``calm.task.name``): the culture-dependent task built from the synthetic world
(:mod:`culture_rl.data.value_tasks`, with its own split and ``seen`` / ``unseen`` held-out
subsets), or value statements (``text``, ``label`` = value dimension, ``culture``) from
``data.statements_path`` or the synthetic world, of which a seeded, stratified
``calm.train.eval_fraction`` is held out. With ``calm.train.lm_task`` the LM head also trains on association prompt/completion
rows of every culture (the culture named in the prompt). The base model is the run's pretrained
tiny model for ``model.path: tiny`` (pretrained first when missing, as PPO trains a missing SFT)
or ``model.path``.

Outputs under ``<run>/calm/``: ``metrics.jsonl``, ``export/`` (see
:mod:`culture_rl.train.calm`), ``compare/`` (baseline and ablation runs), ``results.json`` and
``report.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

from culture_rl.config import ExperimentConfig
from culture_rl.core.errors import ConfigError
from culture_rl.train.calm import CalmJob, run_calm_stage, run_compare_stage
from culture_rl.train.calm_data import split_statements
from culture_rl.train.calm_loop import LOSS_TERMS
from culture_rl.data.align_data import AlignData, load_align_data
from culture_rl.methods import MethodPlan
from culture_rl.methods.align.sft import TINY, pretrained_tiny_path, run_pretrain, stage_dir
from culture_rl.models.loading import prepare_model
from culture_rl.data import examples
from culture_rl.data.statements import load_statements
from culture_rl.data.value_tasks import culture_dependent_statements

MODULES = ("disentangle", "contrastive", "prototypes", "cross_attention", "moe", "fusion")


def load_statements_for(config: ExperimentConfig, data: AlignData) -> list[dict]:
    """The statements of ``calm.task``: the culture-dependent task's rows (with their own
    ``split``) or the loaded / world statements."""
    if config.calm.task.name == "culture_dependent":
        return culture_dependent_rows(config, data)
    path = config.data.statements_path or (data.world_files or {}).get("statements")
    if path:
        statements = load_statements(path)
    elif data.world is not None:
        statements = [dict(s) for s in data.world.statements]
    else:
        raise ConfigError("CALM training needs labelled value statements: set "
                          "data.statements_path", field="data.statements_path")
    missing = [s.get("id") for s in statements if not s.get("culture")]
    if missing:
        raise ConfigError(f"CALM training needs a culture on every statement ({len(missing)} "
                          f"have none, e.g. id {missing[0]!r})", field="data.statements_path")
    return statements


def culture_dependent_rows(config: ExperimentConfig, data: AlignData) -> list[dict]:
    task = config.calm.task
    if config.data.statements_path or data.world is None:
        raise ConfigError("the culture_dependent task is built from the synthetic world; "
                          "use calm.task.name=statements for data.statements_path",
                          field="calm.task.name")
    try:
        return culture_dependent_statements(
            data.world, acts_per_value=task.acts_per_value,
            unseen_per_culture=task.unseen_per_culture, train_per_pair=task.train_per_pair,
            heldout_per_pair=task.heldout_per_pair,
            heldout_per_unseen_pair=task.heldout_per_unseen_pair, label_noise=task.label_noise,
            distractor_rate=task.distractor_rate,
            seed=config.run.seed if task.seed is None else task.seed)
    except ValueError as error:
        field = "calm.task.acts_per_value" if "acts_per_value" in str(error) else "calm.task"
        raise ConfigError(str(error), field=field) from None


def build_calm_rows(statements: list[dict], fraction: float, seed: int
                    ) -> tuple[list[dict], list[dict], list[str], list[str]]:
    """(train rows, held-out rows, label names, culture names): label and culture ids by
    sorted name. Statements that all carry a ``split`` ("train" / "heldout") keep it (the
    culture-dependent task); otherwise a seeded, stratified ``fraction`` is held out. A
    ``subset`` on a statement is kept (held-out scores are also reported per subset)."""
    labels = sorted({s["label"] for s in statements})
    cultures = sorted({s["culture"] for s in statements})
    if len(labels) < 2:
        raise ConfigError("CALM training needs at least two value labels",
                          field="data.statements_path")
    if len(cultures) < 2:
        raise ConfigError("CALM training needs statements of at least two cultures",
                          field="data.statements_path")
    label_id = {name: i for i, name in enumerate(labels)}
    culture_id = {name: i for i, name in enumerate(cultures)}

    def row(s: dict) -> dict:
        out = {"id": s.get("id"), "text": s["text"], "label": s["label"],
               "culture": s["culture"], "label_id": label_id[s["label"]],
               "culture_id": culture_id[s["culture"]]}
        if s.get("subset"):
            out["subset"] = s["subset"]
        return out

    if statements and all(s.get("split") in ("train", "heldout") for s in statements):
        train = [s for s in statements if s["split"] == "train"]
        heldout = [s for s in statements if s["split"] == "heldout"]
        if not train or not heldout:
            raise ConfigError("the task has no training or no held-out statements",
                              field="calm.task")
    else:
        train, heldout = split_statements(statements, fraction, seed)
    return [row(s) for s in train], [row(s) for s in heldout], labels, cultures


def lm_rows(config: ExperimentConfig, data: AlignData, cultures: list[str]) -> list[dict]:
    """Association prompt/completion rows of every culture with norms (culture in the prompt,
    no class label): the optional LM task."""
    rows = []
    for culture_id, culture in enumerate(cultures):
        norms = data.norms_by_culture.get(culture)
        if not norms:
            continue
        made = examples.build_sft_examples(
            norms, data.split["train"], language=config.data.language,
            fraction=config.data.resample_fraction,
            max_associations=config.data.max_associations, examples_per_cue=1,
            seed=config.run.seed)[:config.calm.train.lm_rows_per_culture]
        for r in made:
            rows.append({"prompt": f"In {culture}: {r['prompt']}", "completion": r["completion"],
                         "culture_id": culture_id, "label_id": -100, "culture": culture})
    return rows


def calm_base_path(config: ExperimentConfig) -> str | None:
    """The base model CALM wraps; None: the tiny model must be pretrained first."""
    if config.model.path != TINY:
        return prepare_model(config.model.path)
    path = pretrained_tiny_path(config)
    return str(path) if (path / "config.json").is_file() else None


def build_calm_job(config: ExperimentConfig, data: AlignData, model_path: str | None = None
                   ) -> CalmJob:
    """The CALM job (validates the data; ``model_path`` None: the tiny base, which may not
    exist yet — it is checked again right before training)."""
    statements = load_statements_for(config, data)
    train, heldout, labels, cultures = build_calm_rows(statements, config.calm.train.eval_fraction,
                                                       config.run.seed)
    if config.calm.train.lm_task:
        train = train + lm_rows(config, data, cultures)
    calm = config.calm
    two_grad_passes = (calm.fusion.enabled and calm.injection != "none" and calm.features_grad
                       and not calm.freeze_base)
    if config.deepspeed.zero_stage == 3 and two_grad_passes:
        # DeepSpeed's ZeRO-3 parameter coordinator fails ("active_backward_submodules is
        # empty during backward pass") when the base runs twice with gradients in one step.
        raise ConfigError("ZeRO-3 cannot backpropagate through both of CALM's passes over the "
                          "base model; set calm.features_grad=false (the reading pass runs "
                          "without gradients), calm.freeze_base=true, calm.injection=none or "
                          "deepspeed.zero_stage<=2", field="calm.features_grad")
    path = model_path or calm_base_path(config) or str(pretrained_tiny_path(config))
    return CalmJob(stage="calm", stage_dir=str(stage_dir(config, "calm")), model_path=path,
                   calm=config.calm, deepspeed=config.deepspeed,
                   lora=config.lora if config.lora.enabled else None, train_rows=train,
                   eval_rows=heldout, label_names=labels, culture_names=cultures,
                   dtype=config.model.dtype, trust_remote_code=config.model.trust_remote_code,
                   chat_template=config.model.chat_template,
                   seed=config.run.seed)


def compare_job(job: CalmJob) -> CalmJob:
    from dataclasses import replace

    train = job.calm.train
    short = train.compare_epochs and train.compare_epochs != train.epochs
    # The baseline gets CALM's budget; the ablations compare_epochs, beside CALM itself at
    # that budget ("calm_short") so the ablation table compares like with like.
    variants = ["baseline", *(["calm_short"] if short else []),
                *[f"no_{m}" for m in train.ablations]]
    return replace(job, stage="calm-compare", stage_dir=str(Path(job.stage_dir) / "compare"),
                   variants=variants, variant_epochs=job.calm.train.compare_epochs)


def render_report(results: dict) -> str:
    subsets = list(dict.fromkeys(k for r in results["models"].values()
                                 for k in r.get("by_subset", {})))
    if results.get("task") == "culture_dependent":
        split = ("the culture-dependent task's own split: 'seen' = (act, culture) pairs "
                 "trained on, in new wording; 'unseen' = an act's meaning never trained in "
                 "that culture")
    else:
        split = f"{results['eval_fraction']:.0%}, seed {results['seed']}"
    lines = ["# CALM: value identification on held-out statements", "",
             f"{results['n_heldout']} held-out statements ({split}); labels: "
             f"{', '.join(results['labels'])}.", "",
             "| model | steps | accuracy | macro-F1 | " +
             "".join(f"acc {s} | F1 {s} | " for s in subsets) +
             " | ".join(f"acc {c}" for c in results["cultures"]) + " |",
             "|---|---|---|---|" + "---|---|" * len(subsets) + "---|" * len(results["cultures"])]
    for name, r in results["models"].items():
        per = " | ".join(f"{r['by_culture'].get(c, {}).get('accuracy', float('nan')):.3f}"
                         for c in results["cultures"])
        sub = "".join(f"{r.get('by_subset', {}).get(s, {}).get('accuracy', float('nan')):.3f} | "
                      f"{r.get('by_subset', {}).get(s, {}).get('macro_f1', float('nan')):.3f} | "
                      for s in subsets)
        lines.append(f"| {name} | {r.get('steps', '')} | {r['accuracy']:.3f} | "
                     f"{r['macro_f1']:.3f} | {sub}{per} |")
    curves = {name: r["curve"] for name, r in results["models"].items() if r.get("curve")}
    if curves:
        steps = sorted({point[0] for curve in curves.values() for point in curve})
        lines += ["", "Held-out accuracy by optimizer step (learning curve):", "",
                  "| model | " + " | ".join(str(s) for s in steps) + " |",
                  "|---|" + "---|" * len(steps)]
        for name, curve in curves.items():
            at = {point[0]: point[1] for point in curve}
            lines.append(f"| {name} | " + " | ".join(f"{at[s]:.2f}" if s in at else ""
                                                     for s in steps) + " |")
    routing = results["models"].get("calm", {}).get("routing")
    if routing:
        lines += ["", "Mean MoE gate weight per culture (rows) and expert (columns), held-out:",
                  "", "| culture | " + " | ".join(f"e{i}" for i in
                                                  range(len(next(iter(routing.values()))))) + " |",
                  "|---|" + "---|" * len(next(iter(routing.values())))]
        for culture, row in routing.items():
            lines.append(f"| {culture} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    terms = results.get("loss_terms")
    if terms:
        lines += ["", "CALM loss terms, first -> last logged step:", "",
                  "| term | first | last |", "|---|---|---|"]
        for name, (first, last) in terms.items():
            lines.append(f"| {name} | {first:.4f} | {last:.4f} |")
    return "\n".join(lines) + "\n"


def _loss_terms(metrics_path: Path) -> dict:
    records = [json.loads(l) for l in metrics_path.read_text("utf-8").splitlines() if l.strip()]
    records = [r for r in records if "loss" in r]
    terms = {}
    for name in ("loss", *LOSS_TERMS):
        values = [r[name] for r in records if name in r]
        if values:
            terms[name] = [values[0], values[-1]]
    return terms


def run_calm(config: ExperimentConfig, data: AlignData, job: CalmJob | None = None) -> dict:
    """Train (or resume, or skip when finished) CALM, then the comparison runs; write
    results.json and report.md; return the results (``job``: what :func:`plan` built)."""
    job = job or build_calm_job(config, data)  # validates the data before any Ray work
    if calm_base_path(config) is None:
        print(f"[calm] no pretrained tiny base in {pretrained_tiny_path(config)}; pretraining "
              "it first", flush=True)
        run_pretrain(config, data)
        job = build_calm_job(config, data)
    print(f"[calm] base {job.model_path}; {len(job.train_rows)} training rows, "
          f"{len(job.eval_rows)} held-out statements, {len(job.label_names)} labels, "
          f"{len(job.culture_names)} cultures", flush=True)
    scores = run_calm_stage(job, config.resources)
    models = {"calm": {**scores, "steps": json.loads(
        (job.export_dir / "finished.json").read_text("utf-8"))["global_step"]}}
    if config.calm.train.compare:
        models.update(run_compare_stage(compare_job(job), config.resources))
    folder = Path(job.stage_dir)
    results = {"labels": job.label_names, "cultures": job.culture_names,
               "task": config.calm.task.name,
               "n_heldout": len(job.eval_rows), "eval_fraction": config.calm.train.eval_fraction,
               "seed": config.run.seed, "models": models,
               "loss_terms": _loss_terms(job.metrics_path) if job.metrics_path.is_file() else {}}
    (folder / "results.json").write_text(json.dumps(results, indent=2), "utf-8")
    report = render_report(results)
    (folder / "report.md").write_text(report, "utf-8")
    print(report)
    print(f"results: {folder / 'results.json'}  (report: {folder / 'report.md'})", flush=True)
    return results


def plan(config: ExperimentConfig) -> MethodPlan:
    """Statements, labels and settings checked (the job built) before any Ray work."""
    data = load_align_data(config)
    return MethodPlan(config, data, build_calm_job(config, data))


def run(plan: MethodPlan) -> dict:
    return run_calm(plan.config, plan.data, plan.prepared)


def summary(results: dict) -> str | None:
    return None  # run_calm printed the report and where results.json is
