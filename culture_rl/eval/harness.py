"""``culture-rl eval``: models x cultures x evaluations, on the evaluation actor group.

1. :func:`plan_evaluation` resolves and checks everything on the driver before any Ray work:
   each model's folder (``eval.models.<label>``), the cultures, the evaluation names and the data
   each evaluation needs. Bad input is one ConfigError naming the item.
2. :func:`run_evaluation` starts ``eval.workers`` ``RolloutWorker`` actors (on one placement
   group, after a resource check), loads each model on them in turn and runs the registered
   evaluations (``eval/evaluate.py``), prompts split across the actors. A model's results are
   cached in ``eval/models/<label>.json`` under a key of the model's files and the evaluation
   settings, so a rerun evaluates only what changed.
3. ``eval/eval.json`` (one record per model x culture x evaluation x metric, with sample counts,
   plus the details the report plots, the command and the config) and ``eval/eval.csv`` are
   written by rename, so a failed run leaves the previous ones intact.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from culture_rl.config import ExperimentConfig, config_to_yaml
from culture_rl.core.errors import ConfigError
from culture_rl.eval.evaluate import (EVALUATIONS, EvalInputs, evaluate, lexical_comparisons,
                                      sample_statements)
from culture_rl.core.redact import redact_text
from culture_rl.data.align_data import AlignData, resolve_cultures
from culture_rl.data.lexicons import load_brysbaert, load_warriner, merge_lexicons
from culture_rl.data.ranking_prompts import eval_ranking_prompts
from culture_rl.data.statements import load_statements
from culture_rl.distributed.cluster import ActorGroup, Role, check_plan, connect, describe_plan
from culture_rl.distributed.metrics import RayGauges
from culture_rl.inference.pools import ActorInference, EvaluationError
from culture_rl.inference.rollout import RolloutWorker
from culture_rl.models.paths import resolve_policy_path

SCHEMA = 1
# Default label -> stage folder. A CALM export is evaluated with its identity state injected
# into generation and scoring; the reflection loop's export is a plain causal LM.
STAGES = {"base": "pretrain", "sft": "sft", "ppo": "ppo", "calm": "calm", "reflect": "reflect",
          "dpo": "dpo"}
RECORD_FIELDS = ("model", "culture", "evaluation", "metric", "subset", "value", "n")
_LABEL = re.compile(r"^[A-Za-z0-9_.\-]+$")
# Settings that change where the work runs, not what a model scores: not part of the cache key.
# The batch size and the number of workers stay in it: they decide which prompts share a
# left-padded batch, and padding can tip a greedy answer (float rounding), so a result is reused
# only for the same batches.
_PLACEMENT_FIELDS = {"models", "cpus_per_worker", "gpus_per_worker", "call_timeout_s"}


@dataclass
class EvalPlan:
    models: dict[str, str]  # label -> resolved model folder or hub name
    evaluations: list[str]
    inputs: EvalInputs


def results_dir(config: ExperimentConfig) -> Path:
    return config.run_dir / "eval"


def evaluation_cues(config: ExperimentConfig, data: AlignData) -> list[str]:
    split = config.eval.split
    cues = data.split["val"] + data.split["test"] if split == "heldout" else data.split[split]
    return cues[:config.eval.max_cues] if config.eval.max_cues else cues


def resolve_models(config: ExperimentConfig, models: dict[str, str] | None = None
                   ) -> dict[str, str]:
    """label -> model folder. A spec naming a stage of this run ('pretrain', 'sft', 'ppo')
    means that stage's export; anything else is a model/export folder or a local hub name."""
    specs = dict(models or config.eval.models)
    if not specs:  # every stage of this run that has been exported
        specs = {label: stage for label, stage in STAGES.items()
                 if (config.run_dir / stage / "export").is_dir()}
        if not specs:
            raise ConfigError(f"{config.run_dir} has no exported model yet (train a stage "
                              "first) and eval.models names none", field="eval.models")
    resolved = {}
    for label, spec in specs.items():
        field = f"eval.models.{label}"
        if not _LABEL.match(label):
            raise ConfigError("a model label may hold only letters, digits, '_', '.' and '-'",
                              field=field)
        if spec in STAGES.values():
            export = config.run_dir / spec / "export"
            if not export.is_dir():
                raise ConfigError(f"stage '{spec}' of this run has no export at {export} "
                                  f"(run `culture-rl {spec}` first)", field=field)
            spec = str(export)
        resolved[label] = resolve_policy_path(spec, field=field)
    return resolved


def _cultures(config: ExperimentConfig, data: AlignData) -> list[str]:
    known = list(data.norms_by_culture)
    known += sorted({c for q in data.survey for c in q.distributions} - set(known))
    if not config.eval.cultures:
        return known
    return resolve_cultures(config.eval.cultures, data, known, "eval.cultures")


def _lexicon(config: ExperimentConfig, data: AlignData):
    files = data.world_files or {}
    warriner = config.data.warriner_path or files.get("warriner")
    brysbaert = config.data.brysbaert_path or files.get("brysbaert")
    if warriner is None and brysbaert is None:
        if data.world is not None:
            return data.world.lexicon
        raise ConfigError("the lexical_norms evaluation needs data.warriner_path and/or "
                          "data.brysbaert_path", field="eval.evaluations")
    parts = [load(path) for load, path in ((load_warriner, warriner), (load_brysbaert, brysbaert))
             if path is not None]
    return merge_lexicons(*parts)


def _statements(config: ExperimentConfig, data: AlignData) -> list[dict]:
    path = config.data.statements_path or (data.world_files or {}).get("statements")
    if path is not None:
        statements = load_statements(path)
    elif data.world is not None:
        statements = data.world.statements
    else:
        raise ConfigError("the value_classification evaluation needs data.statements_path",
                          field="eval.evaluations")
    return sample_statements(statements, config.eval.max_statements, config.run.seed)


def _tension_pair(config: ExperimentConfig, data: AlignData, cultures: list[str]
                  ) -> tuple[str, str]:
    surveyed = {c for q in data.survey for c in q.distributions}
    pair = list(config.eval.tension_pair)
    if not pair:
        others = [c for c in cultures if c != data.target_culture and c in surveyed]
        if not others or data.target_culture not in surveyed:
            raise ConfigError("high_tension needs two cultures in the survey; set "
                              "eval.tension_pair", field="eval.tension_pair")
        return others[0], data.target_culture
    if data.world is not None:
        try:
            pair = [data.world.culture(c).name for c in pair]
        except KeyError as err:
            raise ConfigError(str(err.args[0]), field="eval.tension_pair") from None
    missing = [c for c in pair if c not in surveyed]
    if missing:
        raise ConfigError(f"culture {missing[0]!r} has no survey distributions",
                          field="eval.tension_pair")
    return pair[0], pair[1]


def plan_evaluation(config: ExperimentConfig, data: AlignData,
                    models: dict[str, str] | None = None) -> EvalPlan:
    """Resolve and check models, cultures, evaluations and their data (no Ray, no writes)."""
    settings = config.eval
    unknown = [e for e in settings.evaluations if e not in EVALUATIONS]
    if unknown:
        raise ConfigError(f"no evaluation named {unknown[0]!r} (registered: "
                          f"{', '.join(EVALUATIONS)})", field="eval.evaluations")
    wanted = set(settings.evaluations)
    resolved = resolve_models(config, models)
    cultures = _cultures(config, data)
    if wanted & {"wvs", "high_tension"} and not data.survey:
        raise ConfigError("the wvs and high_tension evaluations need survey questions "
                          "(data.survey_path)", field="eval.evaluations")
    inputs = EvalInputs(
        cultures=cultures, target_culture=data.target_culture,
        norms_by_culture=data.norms_by_culture, cues=evaluation_cues(config, data),
        survey=list(data.survey),
        lexicon=_lexicon(config, data) if "lexical_norms" in wanted else None,
        statements=_statements(config, data) if "value_classification" in wanted else [],
        ranking={c: eval_ranking_prompts(config, data, c) for c in cultures
                 if c in data.norms_by_culture} if "ranking" in wanted else {},
        tension_pair=_tension_pair(config, data, cultures) if "high_tension" in wanted else None,
        k_values=tuple(settings.k_values), language=config.data.language,
        max_new_tokens=settings.max_new_tokens,
        ranking_max_new_tokens=config.rollout.max_new_tokens,
        culture_prompt=settings.culture_prompt, tension_top_n=settings.tension_top_n,
        concrete_threshold=settings.concrete_threshold,
        human_associations=settings.human_associations)
    return EvalPlan(resolved, list(settings.evaluations), inputs)


# ------------------------------------------------------------------------------ running


def model_stamp(path: str) -> list:
    """Names, sizes and modification times of a model folder's files: a re-exported model
    gets a new cache key. (A hub name is keyed by its name.)"""
    folder = Path(path)
    if not folder.is_dir():
        return [path]
    return sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns)
                  for f in folder.iterdir() if f.is_file())


def cache_key(config: ExperimentConfig, evaluations: list[str], model_path: str) -> str:
    settings = config.eval.model_dump(mode="json", exclude=_PLACEMENT_FIELDS)
    blob = json.dumps({"eval": settings, "evaluations": evaluations,
                       "data": config.data.model_dump(mode="json"),
                       "world": config.world.model_dump(mode="json"), "seed": config.run.seed,
                       "ppo_words": config.ppo.ranking_words,
                       "ranking_tokens": config.rollout.max_new_tokens,
                       "model": model_path, "files": model_stamp(model_path),
                       # Only when set, so that the keys of earlier evaluations stay the same.
                       **({"chat_template": config.model.chat_template}
                          if config.model.chat_template != "auto" else {})}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, "utf-8")
    partial.replace(path)


def evaluation_values(records: list[dict], model: str) -> dict[str, float]:
    """One model's overall records as ``evaluation_<evaluation>_<metric>/<culture>`` numbers
    for the dashboard gauges."""
    return {f"evaluation_{r['evaluation']}_{r['metric']}/{r['culture']}": r["value"]
            for r in records if r["model"] == model and r["subset"] == "all"
            and r["value"] is not None}


class EvaluationGroup:
    """The evaluation actors, started on the first model that is not cached."""

    def __init__(self, config: ExperimentConfig):
        self.config, self.group, self.inference = config, None, None

    def load(self, model_path: str):
        import ray

        settings, model = self.config.eval, self.config.model
        if self.group is None:
            connect(self.config.resources.address)
            role = Role("evaluator", settings.workers, settings.cpus_per_worker,
                        settings.gpus_per_worker)
            print(describe_plan([role]), flush=True)
            check_plan([role], ray.cluster_resources(), self.config.resources.autoscaling,
                       section="eval")
            threads = max(1, int(settings.cpus_per_worker))
            self.group = ActorGroup(
                role, RolloutWorker,
                lambda rank: ((model_path, "hf", model.dtype, model.trust_remote_code, threads),
                              {"chat_template": model.chat_template}),
                self.config.ppo_resources.placement_timeout_s)
            self.inference = ActorInference(self.group, settings.batch_size,
                                            settings.call_timeout_s, model_path)
            # The constructors load the first model; a failed load surfaces here.
            try:
                ray.get([a.pid.remote() for a in self.group.actors],
                        timeout=settings.call_timeout_s)
            except ray.exceptions.GetTimeoutError:
                raise EvaluationError(f"the evaluation actors did not load {model_path} within "
                                      f"{settings.call_timeout_s:g} s (eval.call_timeout_s)") \
                    from None
        else:
            self.inference.load(model_path)
        return self.inference

    def shutdown(self) -> None:
        if self.group is not None:
            self.group.shutdown()
            self.group = None


def run_evaluation(config: ExperimentConfig, plan: EvalPlan, command: str | None = None) -> dict:
    """Evaluate every planned model (cached ones are reused); write eval.json and eval.csv."""
    out = results_dir(config)
    group = EvaluationGroup(config)
    per_model: dict[str, dict] = {}
    try:
        for i, (label, path) in enumerate(plan.models.items(), start=1):
            key = cache_key(config, plan.evaluations, path)
            cached_file = out / "models" / f"{label}.json"
            if cached_file.is_file():
                cached = json.loads(cached_file.read_text("utf-8"))
                if cached.get("key") == key:
                    print(f"[eval] {label} ({i}/{len(plan.models)}): cached "
                          f"{cached_file}", flush=True)
                    per_model[label] = cached
                    continue
            print(f"[eval] {label} ({i}/{len(plan.models)}): {path}", flush=True)
            started = time.perf_counter()
            inference = group.load(path)
            run = evaluate(label, inference, plan.inputs, plan.evaluations)
            seconds = round(time.perf_counter() - started, 2)
            print(f"[eval] {label}: {len(run.records)} numbers in {seconds:.1f} s", flush=True)
            per_model[label] = {"key": key, "model_dir": path, "seconds": seconds,
                                "records": run.records, "details": run.details}
            _write_atomic(cached_file, json.dumps(per_model[label], ensure_ascii=False))
    finally:
        group.shutdown()
    records = [r for result in per_model.values() for r in result["records"]]
    details = {label: result["details"] for label, result in per_model.items()}
    results = {
        "schema": SCHEMA, "run": config.run.name,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        # Both redacted: an override such as resources.address=ray://user:pass@head is in argv.
        "command": redact_text(command or shlex.join(["culture-rl", *sys.argv[1:]])),
        "config_yaml": config_to_yaml(config), "target_culture": plan.inputs.target_culture,
        "cultures": plan.inputs.cultures, "evaluations": plan.evaluations,
        "models": {label: {"path": r["model_dir"], "seconds": r["seconds"]}
                   for label, r in per_model.items()},
        "records": records, "comparisons": lexical_comparisons(details), "details": details}
    write_results(out, results)
    for label in per_model:
        RayGauges(run=config.run.name, workflow="eval", model=label).set(
            evaluation_values(records, label))
    return results


def records_csv(records: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RECORD_FIELDS, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: ("" if record[k] is None else record[k]) for k in RECORD_FIELDS})
    return buffer.getvalue()


def write_results(folder: Path, results: dict) -> dict[str, Path]:
    paths = {"json": folder / "eval.json", "csv": folder / "eval.csv"}
    _write_atomic(paths["json"], json.dumps(results, indent=1, ensure_ascii=False))
    _write_atomic(paths["csv"], records_csv(results["records"]))
    return paths


def lookup(results: dict, model: str, culture: str, evaluation: str, metric: str,
           subset: str = "all"):
    """The value of one record, or None."""
    for r in results["records"]:
        if (r["model"], r["culture"], r["evaluation"], r["metric"], r["subset"]) == \
                (model, culture, evaluation, metric, subset):
            return r["value"]
    return None
