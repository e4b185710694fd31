"""Stage 6 of CultureSPA: WVS alignment per culture of the base model and every tuned one, with
and without CCoT, the guard on general ability, and the pipeline's report.

The survey answers are option distributions read from the model (culture-prompted, or after its
own CCoT thoughts); adapter sets are served with each culture's adapter by request routing.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from typing import Sequence

from culture_rl.config import ExperimentConfig
from culture_rl.data import prompts
from culture_rl.models.chat import AnswerBegun
from culture_rl.methods.culturespa.stages import MANIFEST, stage_key
from culture_rl.data.align_data import AlignData
from culture_rl.eval.evaluate import survey_scores
from culture_rl.eval.harness import model_stamp
from culture_rl.models.adapters import read_adapter_set


def ccot_distributions(config, questions, culture, inference, routes=None):
    """The model's answer distributions to ``questions`` (objects or dicts with question and
    options) after its own greedy CCoT thoughts (their first line) for ``culture``."""
    language = config.data.language
    items = [(q["question"], q["options"]) if isinstance(q, dict) else (q.question, q.options)
             for q in questions]
    heads = [prompts.ccot_prompt(question, options, culture, language)
             for question, options in items]
    thoughts = inference.generate(heads, config.spa.ccot_max_new_tokens, routes=routes)
    # The answer is read after the thoughts, in the same assistant turn (a base model reads
    # the same text it always read: head + thoughts + "Answer:").
    full = [AnswerBegun(h, t.split("\n")[0] + prompts.ccot_answer_suffix(language))
            for h, t in zip(heads, thoughts)]
    return inference.option_distributions(
        full, [prompts.survey_option_labels(len(options)) for _, options in items],
        routes=routes)


def survey_alignment(config: ExperimentConfig, inference, culture: str, prompting: str,
                     survey, routing: str = "none") -> dict:
    """Mean alignment of the model's answers with ``culture``'s survey distributions.
    ``routing`` (adapter sets): 'adapter' serves every prompt with ``culture``'s adapter,
    'base' with the adapters off, 'none' sends no routes (a plain model)."""
    questions = [q for q in survey if culture in q.distributions]
    routes = {"none": None, "adapter": [culture] * len(questions),
              "base": [None] * len(questions)}[routing]
    if prompting == "ccot":
        dists = ccot_distributions(config, questions, culture, inference, routes)
    else:
        named = culture if prompting == "culture" else None
        texts = [(prompts.culture_preamble(named, config.data.language) if named else "")
                 + prompts.survey_prompt(q.question, q.options, config.data.language)
                 for q in questions]
        dists = inference.option_distributions(
            texts, [prompts.survey_option_labels(len(q.options)) for q in questions],
            routes=routes)
    return survey_scores(dists, questions, culture)


def guard_documents(config: ExperimentConfig, data: AlignData) -> list[str]:
    """Held-out documents for the general-ability guard: a seeded sample of the base corpus
    (the synthetic world), else the seed survey prompts."""
    docs = list(data.corpus) or [prompts.survey_prompt(q.question, q.options) for q in
                                 data.survey]
    rng = random.Random(config.run.seed + 7)
    return rng.sample(docs, min(config.spa.lm_guard_docs, len(docs)))


def evaluate_models(config: ExperimentConfig, data: AlignData, plan,
                    models: dict[str, str], group) -> dict:
    """WVS alignment per model x prompting x culture, and the LM-loss guard."""
    settings = {"base": ["unprompted", "culture"], "joint": ["culture"],
                "specific": ["culture"]}
    if not config.spa.specific_culture_in_prompt:
        # Adapters trained without the culture named: is the adapter alone the culture?
        settings["specific"].insert(0, "unprompted")
    if config.spa.ccot:
        for name in settings:
            settings[name].append("ccot")
    docs = guard_documents(config, data)
    rows, guard = [], {}
    for name, path in {"base": plan.model_path, **models}.items():
        inference = group.load(path)
        routed = name == "specific"
        started = time.perf_counter()
        for prompting in settings[name]:
            for culture in plan.cultures:
                routing = ("none" if not routed else
                           "adapter" if _has_adapter(path, culture) else "base")
                scores = survey_alignment(config, inference, culture, prompting, data.survey,
                                          routing)
                rows.append({"model": name, "prompting": prompting, "culture": culture,
                             **scores})
        if routed:
            losses = [statistics.fmean(inference.lm_losses(docs, routes=[c] * len(docs)))
                      for c in plan.cultures if _has_adapter(path, c)]
        else:
            losses = [statistics.fmean(inference.lm_losses(docs))]
        guard[name] = statistics.fmean(losses)
        print(f"[spa] evaluated {name} in {time.perf_counter() - started:.1f} s; LM loss "
              f"{guard[name]:.4f}", flush=True)
    margin = config.spa.lm_guard_margin
    base_loss = guard["base"]
    lm_guard = {name: {"lm_loss": loss, "rise": (loss - base_loss) / base_loss,
                       "held": (loss - base_loss) / base_loss <= margin}
                for name, loss in guard.items()}
    return {"rows": rows, "lm_guard": lm_guard, "lm_guard_margin": margin,
            "lm_guard_docs": len(docs), "mean_js": mean_js(rows)}


def _has_adapter(adapter_set: str, culture: str) -> bool:
    return culture in read_adapter_set(adapter_set)["adapters"]


def mean_js(rows: Sequence[dict]) -> dict[str, float]:
    """'<model>/<prompting>' -> JS distance averaged over cultures."""
    groups: dict[str, list[float]] = {}
    for r in rows:
        groups.setdefault(f"{r['model']}/{r['prompting']}", []).append(r["js"])
    return {k: statistics.fmean(v) for k, v in groups.items()}


def render_report(results: dict, stats: dict) -> str:
    lines = ["# CultureSPA", "",
             f"Questions: {stats['questions']['kept']} generated of "
             f"{stats['questions']['attempts']} attempts by "
             f"{stats['questions'].get('form', 'continuation')} (dropped: "
             f"{stats['questions']['dropped'] or 'none'}); culture-related instances: "
             f"{stats['related']['related']}.", "",
             "| culture | questions | related |", "|---|---|---|"]
    for culture, entry in stats["related"]["by_culture"].items():
        lines.append(f"| {culture} | {entry['questions']} | {entry['related']} |")
    lines += ["", "| topic | questions | related |", "|---|---|---|"]
    for topic, entry in stats["related"]["by_topic"].items():
        lines.append(f"| {topic} | {entry['questions']} | {entry['related']} |")
    cultures = list(dict.fromkeys(r["culture"] for r in results["rows"]))
    lines += ["", "WVS JS distance to each culture's answers (lower is closer):", "",
              "| model | prompting | " + " | ".join(cultures) + " | mean |",
              "|---" * (len(cultures) + 3) + "|"]
    for key, mean in results["mean_js"].items():
        model, prompting = key.split("/")
        cells = [next(f"{r['js']:.3f}" for r in results["rows"] if r["model"] == model
                      and r["prompting"] == prompting and r["culture"] == c) for c in cultures]
        lines.append(f"| {model} | {prompting} | " + " | ".join(cells) + f" | {mean:.3f} |")
    lines += ["", f"General-ability guard: LM loss on {results['lm_guard_docs']} base-corpus "
              f"documents may rise at most {results['lm_guard_margin']:.0%}:", "",
              "| model | LM loss | rise | held |", "|---|---|---|---|"]
    for name, entry in results["lm_guard"].items():
        lines.append(f"| {name} | {entry['lm_loss']:.4f} | {entry['rise']:+.1%} | "
                     f"{'yes' if entry['held'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def evaluate_step(config, data, plan, models, group, upstream_key, folder) -> dict:
    """The evaluation, or its results when its manifest matches (same data, models, settings)."""
    key = stage_key(upstream_key, {n: model_stamp(p) for n, p in models.items()},
               config.spa.ccot, config.spa.ccot_max_new_tokens, config.spa.lm_guard_docs,
               config.spa.specific_culture_in_prompt,
               config.spa.lm_guard_margin)
    manifest = folder / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text("utf-8")).get("key") == key:
        print(f"[spa] evaluation: already done ({folder / 'results.json'}), skipped", flush=True)
        return json.loads((folder / "results.json").read_text("utf-8"))
    results = evaluate_models(config, data, plan, models, group)
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / "results.json.partial"
    partial.write_text(json.dumps(results, indent=1), "utf-8")
    partial.replace(folder / "results.json")
    (folder / (MANIFEST + ".partial")).write_text(json.dumps({"key": key}), "utf-8")
    (folder / (MANIFEST + ".partial")).replace(manifest)
    return results
