"""Evaluate one model on the foundation's two measures, per culture.

- **Associations**: greedy answers to the association prompt on held-out cues, parsed into a
  word list and scored with P@k against each culture's human associations (plus the share of
  answers that parse to no word at all).
- **Ranking** (ALIGN's PPO task): greedy answers to ranking prompts, scored with the Spearman
  rho against the human frequency order (-1 when unparseable), plus the parse-failure rate.
- **Survey**: for each question, the model's answer distribution read from the option-label
  log-probabilities, scored against each culture's distribution (JS, EMD, KL both ways, cosine,
  argmax agreement), averaged over questions.

Runs in the calling process on one device; the evaluation-harness issue moves generation onto
the rollout actors for many models at once.
"""

from __future__ import annotations

import statistics
import time
from typing import Mapping, Sequence

from culture_rl.data import prompts as prompt_templates
from culture_rl.data.surveys import SurveyQuestion
from culture_rl.data.swow import AssociationNorms
from culture_rl.eval.generation import generate_answers, option_distributions
from culture_rl.eval.metrics import (distribution_scores, parse_ranking, precision_at_k,
                                     spearman_ranking_reward, split_answer)


def association_scores(answers: Sequence[str], human: Sequence[Sequence[str]],
                       k_values: Sequence[int]) -> dict[str, float]:
    """Mean P@k over cues and the parse-failure rate, from already generated answers."""
    n = len(answers)
    if n == 0:
        return {"n_cues": 0}
    scores: dict[str, float] = {f"p@{k}": sum(precision_at_k(a, h, k) for a, h in
                                              zip(answers, human)) / n for k in k_values}
    scores["parse_failure_rate"] = sum(not split_answer(a) for a in answers) / n
    scores["n_cues"] = n
    return scores


def ranking_parse_failure_rate(answers: Sequence[str], examples: Sequence[Mapping]) -> float:
    """Share of answers that name none of their example's ``words`` (examples without words
    are not counted)."""
    failed = [parse_ranking(a, list(e["words"])) is None
              for a, e in zip(answers, examples) if "words" in e]
    return sum(failed) / len(failed) if failed else 0.0


def ranking_scores(answers: Sequence[str], examples: Sequence[Mapping]) -> dict[str, float]:
    """Mean Spearman rho against each example's ``human_order`` and the parse-failure rate."""
    n = len(answers)
    if n == 0:
        return {"n_prompts": 0}
    rhos = [spearman_ranking_reward(a, list(e["human_order"])) for a, e in zip(answers, examples)]
    return {"rho": statistics.fmean(rhos),
            "parse_failure_rate": ranking_parse_failure_rate(answers, examples), "n_prompts": n}


def survey_scores(model_distributions: Sequence[Sequence[float]],
                  questions: Sequence[SurveyQuestion], culture: str) -> dict[str, float]:
    """Mean distribution scores against ``culture`` over the questions that have it."""
    per_metric: dict[str, list[float]] = {}
    for dist, question in zip(model_distributions, questions):
        target = question.distributions.get(culture)
        if target is None:
            continue
        for name, value in distribution_scores(dist, target).items():
            per_metric.setdefault(name, []).append(value)
    result = {name: statistics.fmean(values) for name, values in per_metric.items()}
    result["n_questions"] = len(next(iter(per_metric.values()), []))
    return result


def evaluate_model(model, tokenizer, *, norms_by_culture: Mapping[str, AssociationNorms],
                   cues: Sequence[str], survey: Sequence[SurveyQuestion] = (),
                   k_values: Sequence[int] = (1, 3, 5, 10), language: str = "en",
                   max_new_tokens: int = 40, batch_size: int = 16, label: str = "model",
                   keep_samples: int = 5, ranking: Sequence[Mapping] = (),
                   ranking_max_new_tokens: int = 96) -> dict:
    """Association P@k and survey alignment of one loaded model against every culture given."""
    started = time.perf_counter()
    answers = generate_answers(model, tokenizer,
                               [prompt_templates.association_prompt(c, language) for c in cues],
                               max_new_tokens=max_new_tokens, batch_size=batch_size)
    report: dict = {"model": label, "associations": {}, "survey": {},
                    "samples": [{"cue": c, "answer": a.strip()}
                                for c, a in list(zip(cues, answers))[:keep_samples]]}
    for culture, norms in norms_by_culture.items():
        scored = [(a, [w for w, _ in norms[c]]) for a, c in zip(answers, cues) if c in norms]
        report["associations"][culture] = association_scores([a for a, _ in scored],
                                                             [h for _, h in scored], k_values)
    if ranking:
        ranking_answers = generate_answers(model, tokenizer, [e["prompt"] for e in ranking],
                                           max_new_tokens=ranking_max_new_tokens,
                                           batch_size=batch_size)
        report["ranking"] = ranking_scores(ranking_answers, ranking)
        report["ranking_samples"] = [{"cue": e["cue"], "answer": a.strip()} for e, a in
                                     list(zip(ranking, ranking_answers))[:keep_samples]]
    if survey:
        survey_prompts = [prompt_templates.survey_prompt(q.question, q.options, language)
                          for q in survey]
        labels = [prompt_templates.survey_option_labels(len(q.options)) for q in survey]
        distributions = option_distributions(model, tokenizer, survey_prompts, labels,
                                             batch_size=batch_size * 2)
        cultures = sorted({c for q in survey for c in q.distributions})
        report["survey"] = {c: survey_scores(distributions, survey, c) for c in cultures}
    report["seconds"] = round(time.perf_counter() - started, 2)
    return report
