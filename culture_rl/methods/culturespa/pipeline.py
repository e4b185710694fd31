"""``culture-rl spa``: the CultureSPA pipeline, each stage a resumable step with its output on disk.

1. ``questions``: per culture topic, the model writes new survey questions (few-shot from the
   seed survey's questions of that topic), parsed, deduplicated, malformed ones counted;
2. ``unaware``: its answer distribution to each question with no culture named;
3. ``aware``: its answer distribution once per culture ("You are a person from X"), or after
   its own cultural chain of thought (``spa.aware_prompting: ccot``);
4. ``related``: the culture-related instances (aware answer differs from the unaware one);
5. fine-tuning with the SFT trainer (Ray Train + DeepSpeed, LoRA): ``joint`` (one model, the
   culture in the prompt) and/or ``specific`` (one adapter per culture, saved as one adapter set);
6. ``evaluation``: WVS answer distributions per culture against the seed survey's, for the base
   model and every tuned one, with and without CCoT, and the guard on general ability (LM loss
   on held-out base-corpus documents).

Generation and scoring run on the evaluation actor group (``eval.workers`` RolloutWorkers).
Stages 1-4 and 6 write ``<run>/spa/<stage>/data.jsonl`` (or ``results.json``) and, last, a
``manifest.json`` holding a key of everything that stage depends on; a rerun skips every stage
whose manifest matches, so an interrupted pipeline restarts at the first unfinished stage, and
fine-tuning resumes through the SFT stage's own checkpoints.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from culture_rl.config import ExperimentConfig
from culture_rl.data import prompts
from culture_rl.core.errors import ConfigError
from culture_rl.models.chat import uses_chat
from culture_rl.models.loading import load_tokenizer
from culture_rl.methods import MethodPlan
from culture_rl.methods.culturespa.evaluate import ccot_distributions, evaluate_step, render_report
from culture_rl.methods.culturespa.instances import related_instances, training_rows
from culture_rl.methods.culturespa.stages import run_step, stage_key
from culture_rl.methods.culturespa.questions import QUESTION_FORMS, collect, question_form
from culture_rl.data.align_data import AlignData, resolve_cultures, load_align_data
from culture_rl.data.surveys import load_survey
from culture_rl.eval.harness import EvaluationGroup, model_stamp
from culture_rl.methods.align.sft import run_pretrain
from culture_rl.models.adapters import write_adapter_set
from culture_rl.models.paths import resolve_policy_path
from culture_rl.train.sft import TrainJob, run_stage

PROGRESS_CHUNK = 64  # prompts per actor between progress lines


@dataclass
class SpaPlan:
    model_path: str
    cultures: list[str]
    topics: dict[str, list]  # topic -> its seed survey questions


def spa_dir(config: ExperimentConfig) -> Path:
    return config.run_dir / "spa"


# ------------------------------------------------------------------------------- planning


def load_spa_data(config: ExperimentConfig) -> AlignData:
    """Your survey (``data.survey_path``; no association norms needed), else the synthetic
    world with its survey and base corpus."""
    if config.data.survey_path is None:
        return load_align_data(config)
    survey = load_survey(config.data.survey_path,
                         skip_mismatched=config.data.skip_mismatched_survey_rows)
    return AlignData(target_culture=config.data.culture or "", norms_by_culture={}, split={},
                     survey=survey, corpus=[], world=None, world_files=None)


def plan_spa(config: ExperimentConfig, data: AlignData) -> SpaPlan:
    """Check cultures, topics and the starting model before any Ray work."""
    spa = config.spa
    if not data.survey:
        raise ConfigError("CultureSPA needs seed survey questions (data.survey_path)",
                          field="data.survey_path")
    surveyed = list(dict.fromkeys(c for q in data.survey for c in q.distributions))
    cultures = resolve_cultures(spa.cultures or surveyed, data, surveyed, "spa.cultures",
                                missing="has no survey distributions")
    has_topics = any(q.topic for q in data.survey)
    topics = {t: [q for q in data.survey if q.topic == t] if has_topics else list(data.survey)
              for t in spa.topics}
    topics = {t: qs for t, qs in topics.items() if qs}
    if not topics:
        raise ConfigError("no seed survey question has any of spa.topics as its topic",
                          field="spa.topics")
    if spa.model_path == "pretrain":
        model_path = str(config.run_dir / "pretrain" / "export" / "model")  # trained if missing
    else:
        model_path = resolve_policy_path(spa.model_path, field="spa.model_path")
    return SpaPlan(model_path, cultures, topics)


def in_chunks(what: str, items: Sequence, call: Callable[[int, int], list], workers: int
              ) -> list:
    """``call(start, end)`` over slices of ``items`` with a progress line (done/total,
    items per second) after each slice."""
    out: list = []
    size = PROGRESS_CHUNK * max(1, workers)
    started = time.perf_counter()
    for start in range(0, len(items), size):
        out.extend(call(start, min(start + size, len(items))))
        rate = len(out) / max(time.perf_counter() - started, 1e-9)
        print(f"[spa] {what}: {len(out)}/{len(items)} ({rate:.1f}/s)", flush=True)
    return out


# ---------------------------------------------------------------------------------- stages


def _survey_prompts(questions: Sequence[dict], culture: str | None, language: str) -> list[str]:
    preamble = prompts.culture_preamble(culture, language) if culture else ""
    return [preamble + prompts.survey_prompt(q["question"], q["options"], language)
            for q in questions]


def _labels(questions: Sequence[dict]) -> list[list[str]]:
    return [prompts.survey_option_labels(len(q["options"])) for q in questions]


def resolved_question_form(config: ExperimentConfig, model_path: str) -> str:
    """``spa.question_prompt`` for this model ('auto' reads its tokenizer, in the driver)."""
    if config.spa.question_prompt != "auto":
        return config.spa.question_prompt
    tokenizer = load_tokenizer(model_path, config.model.trust_remote_code,
                               config.model.chat_template)
    return question_form("auto", uses_chat(tokenizer))


def generate_questions(config: ExperimentConfig, plan: SpaPlan, inference, workers: int,
                       form: str = "continuation") -> tuple[list[dict], dict]:
    spa, language = config.spa, config.data.language
    rng = random.Random(config.run.seed)
    write_prompt = QUESTION_FORMS[form].prompt
    jobs = []
    for topic, seeds in plan.topics.items():
        for _ in range(spa.questions_per_topic):
            shots = rng.sample(seeds, min(spa.seed_questions, len(seeds)))
            jobs.append((topic, write_prompt(topic, [(q.question, q.options) for q in shots],
                                             language)))
    completions = in_chunks(
        "question generation", jobs,
        lambda a, b: inference.generate([p for _, p in jobs[a:b]],
                                        spa.generation_max_new_tokens, sample=True,
                                        temperature=spa.generation_temperature,
                                        seed=config.run.seed + a), workers)
    seeds_text = [q.question for qs in plan.topics.values() for q in qs]
    kept, dropped = collect([(t, c) for (t, _), c in zip(jobs, completions)], seen=seeds_text,
                            form=form)
    rows = [{"id": f"gen{i}", "topic": q.topic, "question": q.question,
             "options": list(q.options), "source": "generated"} for i, q in enumerate(kept)]
    if spa.include_seed_questions:
        rows += [{"id": f"seed-{q.id}", "topic": q.topic or topic, "question": q.question,
                  "options": list(q.options), "source": "seed"}
                 for topic, qs in plan.topics.items() for q in qs]
    by_topic = {t: sum(r["topic"] == t for r in rows) for t in plan.topics}
    stats = {"form": form, "attempts": len(jobs), "kept": len(kept), "dropped": dropped,
             "by_topic": by_topic,
             "samples": [c.strip()[:200] for c in completions[:3]]}
    print(f"[spa] questions ({form}): {len(kept)} new of {len(jobs)} attempts; dropped "
          f"{sum(dropped.values())} ({', '.join(f'{k} {v}' for k, v in dropped.items())})",
          flush=True)
    if not rows:
        raise ConfigError("the model wrote no usable question (see the dropped counts above); "
                          "raise spa.questions_per_topic or set spa.include_seed_questions",
                          field="spa.questions_per_topic")
    return rows, stats


def answer_distributions(config: ExperimentConfig, questions: list[dict], culture: str | None,
                         inference, workers: int) -> list[list[float]]:
    """The model's answer distribution to each question: culture-unaware (``culture`` None),
    culture-prompted, or after its own CCoT thoughts (``spa.aware_prompting: ccot``)."""
    if culture is not None and config.spa.aware_prompting == "ccot":
        return in_chunks(f"answers ({culture}, after CCoT thoughts)", questions,
                         lambda a, b: ccot_distributions(config, questions[a:b], culture,
                                                         inference), workers)
    texts = _survey_prompts(questions, culture, config.data.language)
    labels = _labels(questions)
    return in_chunks(f"answers ({culture or 'culture-unaware'})", texts,
                     lambda a, b: inference.option_distributions(texts[a:b], labels[a:b]),
                     workers)


# ----------------------------------------------------------------------------- fine-tuning


def _train(config: ExperimentConfig, name: str, folder: Path, rows: list[dict], base: str):
    job = TrainJob(stage=name, stage_dir=str(folder), model_path=base, train=config.spa.train,
                   deepspeed=config.deepspeed, lora=config.lora, train_rows=rows,
                   dtype=config.model.dtype, trust_remote_code=config.model.trust_remote_code,
                   chat_template=config.model.chat_template, seed=config.run.seed)
    return run_stage(job, config.resources)


def _targets(config: ExperimentConfig) -> dict:
    spa = config.spa
    targets = {"target": spa.target, "samples": spa.samples_per_instance, "seed": config.run.seed}
    # Only when set, so that the keys of runs made before these options stay the same.
    if spa.target_temperature != 1:
        targets["temperature"] = spa.target_temperature
    return targets


def fine_tune(config: ExperimentConfig, plan: SpaPlan, instances: list[dict]) -> dict[str, str]:
    """The tuned models: 'joint' -> its merged export; 'specific' -> the adapter set folder.

    Their folders carry a key of the training data and settings (``joint-<key>``), so a rerun
    with the same ones finds its finished (or resumable) runs, and changed settings train anew
    beside them instead of reusing a model made from other data."""
    spa = config.spa
    key = stage_key(instances, _targets(config), spa.specific_culture_in_prompt,
               spa.train.model_dump(mode="json"), config.lora.model_dump(mode="json"),
               config.deepspeed.model_dump(mode="json"), plan.model_path)[:8]
    models = {}
    if "joint" in spa.modes:
        rows = training_rows(instances, "joint", config.data.language, **_targets(config))
        rows = rows["joint"]
        print(f"[spa] culture-joint fine-tuning on {len(rows)} instances", flush=True)
        models["joint"] = str(_train(config, "spa_joint", spa_dir(config) / f"joint-{key}",
                                     rows, plan.model_path).model_dir)
    if "specific" in spa.modes:
        per_culture = training_rows(instances, "specific", config.data.language,
                                    spa.specific_culture_in_prompt, **_targets(config))
        adapters = {}
        for culture in plan.cultures:
            rows = per_culture.get(culture, [])
            if not rows:
                print(f"[spa] {culture}: no culture-related instance, no adapter (its requests "
                      "use the base model)", flush=True)
                continue
            print(f"[spa] culture-specific adapter for {culture} on {len(rows)} instances",
                  flush=True)
            result = _train(config, f"spa_{culture}",
                            spa_dir(config) / f"specific-{key}" / culture, rows, plan.model_path)
            adapters[culture] = result.export_dir / "adapter"
        if adapters:
            models["specific"] = str(write_adapter_set(spa_dir(config) / f"specific-{key}",
                                                       plan.model_path, adapters))
    return models


# ------------------------------------------------------------------------------- the driver


def run_spa(config: ExperimentConfig, data: AlignData, plan: SpaPlan | None = None) -> dict:
    """Run every stage (``plan``: what :func:`plan_spa` returned, when checked already)."""
    plan = plan or plan_spa(config, data)
    out = spa_dir(config)
    if config.spa.model_path == "pretrain" and not Path(plan.model_path).is_dir():
        print("[spa] no base model in this run yet: pretraining it first", flush=True)
        run_pretrain(config, data)

    workers = config.eval.workers
    # What the data stages depend on (the fine-tuning and evaluation settings are keyed later).
    spa = config.spa.model_dump(mode="json", exclude={"train", "modes", "ccot",
                                                      "ccot_max_new_tokens", "lm_guard_docs",
                                                      "lm_guard_margin", "target",
                                                      "samples_per_instance",
                                                      "target_temperature",
                                                      "specific_culture_in_prompt",
                                                      "aware_prompting",
                                                      "question_prompt"})
    form = resolved_question_form(config, plan.model_path)
    # The form is keyed only when it is not the continuation every earlier run used.
    base_key = stage_key(spa, plan.model_path, model_stamp(plan.model_path),
                    config.world.model_dump(), config.data.model_dump(), config.run.seed,
                    *([form] if form != "continuation" else []))
    group = EvaluationGroup(config)
    stats: dict = {}
    try:
        inference = None

        def base_inference():
            nonlocal inference
            if inference is None:
                inference = group.load(plan.model_path)
            return inference

        questions, stats["questions"] = run_step(
            out / "questions", base_key,
            lambda: generate_questions(config, plan, base_inference(), workers, form))
        unaware, _ = run_step(out / "unaware", stage_key(base_key, "unaware"), lambda: (
            [{"id": q["id"], "dist": d} for q, d in zip(questions, answer_distributions(
                config, questions, None, base_inference(), workers))], {}))
        # Keyed only when not the default, so runs made before the option keep their key.
        aware_key = stage_key(base_key, "aware", plan.cultures,
                              *(["ccot"] if config.spa.aware_prompting == "ccot" else []))
        aware, _ = run_step(out / "aware", aware_key, lambda: (
            [{"id": q["id"], "culture": c, "dist": d} for c in plan.cultures
             for q, d in zip(questions, answer_distributions(config, questions, c,
                                                             base_inference(), workers))], {}))
        related_key = stage_key(aware_key, "related", config.spa.js_threshold)
        instances, stats["related"] = run_step(out / "related", related_key, lambda: (
            related_instances(questions, [u["dist"] for u in unaware],
                              {c: [a["dist"] for a in aware if a["culture"] == c]
                               for c in plan.cultures}, config.spa.js_threshold)))
        group.shutdown()  # training needs the CPUs
        inference = None
        models = fine_tune(config, plan, instances)
        results = evaluate_step(config, data, plan, models, group, related_key,
                                out / "evaluation")
    finally:
        group.shutdown()
    report = render_report(results, stats)
    (out / "report.md").write_text(report, "utf-8")
    print(report, flush=True)
    print(f"[spa] report: {out / 'report.md'} (numbers: {out / 'evaluation' / 'results.json'})",
          flush=True)
    return {"results": results, "stats": stats, "models": models}


# ------------------------------------------------------------------------------- the protocol


def plan(config: ExperimentConfig) -> MethodPlan:
    """Cultures, topics and the starting model checked before any Ray work."""
    data = load_spa_data(config)
    return MethodPlan(config, data, plan_spa(config, data))


def run(plan: MethodPlan) -> dict:
    return run_spa(plan.config, plan.data, plan.prepared)


def summary(result: dict) -> str | None:
    return None  # run_spa printed the report and where the results are
