"""Evaluate one model on the foundation's two measures, per culture.

- **Associations**: greedy answers to the association prompt on held-out cues, parsed into a
  word list and scored with P@k against each culture's human associations (plus the share of
  answers that parse to no word at all).
- **Ranking** (ALIGN's PPO task): greedy answers to ranking prompts, scored with the Spearman
  rho against the human frequency order (-1 when unparseable), plus the parse-failure rate.
- **Survey**: for each question, the model's answer distribution read from the option-label
  log-probabilities, scored against each culture's distribution (JS, EMD, KL both ways, cosine,
  argmax agreement), averaged over questions.

The harness's registered evaluations (one function each, ``EVALUATIONS``) are at the end; each
reads a model only through an :class:`~culture_rl.inference.pools.Inference` and appends
``(model, culture, evaluation, metric, subset, value, n)`` records to a :class:`ModelRun`.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from culture_rl.data import prompts as prompt_templates
from culture_rl.data.surveys import SurveyQuestion
from culture_rl.data.swow import AssociationNorms
from culture_rl.inference.pools import Inference
from culture_rl.eval.metrics import (accuracy, closer_to, concrete_share, distribution_scores,
                                     high_tension_items, length_summary, lexical_norms, macro_f1,
                                     parse_ranking, precision_at_k, spearman_ranking_reward,
                                     split_answer, tension_score, wilcoxon_paired)


def association_scores(answers: Sequence[str], human: Sequence[Sequence[str]],
                       k_values: Sequence[int]) -> dict[str, float]:
    """Mean P@k over cues and the parse-failure rate, from already generated answers."""
    n = len(answers)
    if n == 0:
        return {"n_cues": 0}
    scores: dict[str, float] = {f"p@{k}": sum(precision_at_k(a, h, k) for a, h in
                                              zip(answers, human)) / n for k in k_values}
    scores["parse_failure_rate"] = sum(not split_answer(a) for a in answers) / n
    # How long the answers are (parsed words; characters): a chat model that talks around its
    # list parses into long, mostly wrong word lists, which P@k alone does not show.
    for unit, sizes in (("words", [len(split_answer(a)) for a in answers]),
                        ("chars", [len(a.strip()) for a in answers])):
        for stat, value in length_summary(sizes).items():
            scores[f"answer_{unit}_{stat}"] = value
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


# ------------------------------------------------------------------ the harness's evaluations

NORMS = ("valence", "arousal", "dominance", "concreteness")
# Survey metric names in records: p is the model's distribution, q the culture's.
_SURVEY_NAMES = {"kl_pq": "kl_model_culture", "kl_qp": "kl_culture_model"}


@dataclass
class EvalInputs:
    """Everything an evaluation reads besides the model; built and checked once per harness run."""

    cultures: list[str]
    target_culture: str
    norms_by_culture: Mapping[str, AssociationNorms]
    cues: list[str]  # held-out cues
    survey: list[SurveyQuestion] = field(default_factory=list)
    lexicon: Mapping[str, Mapping[str, float]] | None = None
    statements: list[dict] = field(default_factory=list)
    ranking: Mapping[str, list[dict]] = field(default_factory=dict)  # culture -> prompts
    tension_pair: tuple[str, str] | None = None
    k_values: tuple[int, ...] = (1, 3, 5, 10)
    language: str = "en"
    max_new_tokens: int = 40
    ranking_max_new_tokens: int = 96
    culture_prompt: bool = False
    tension_top_n: int = 50
    concrete_threshold: float = 3.0
    human_associations: int = 10
    keep_samples: int = 5

    @property
    def normed_cultures(self) -> list[str]:
        """The cultures that have association norms (a survey may name more)."""
        return [c for c in self.cultures if c in self.norms_by_culture]


class ModelRun:
    """One model under evaluation: its records and details, and generations shared between
    evaluations (the association answers feed both P@k and the lexical norms)."""

    def __init__(self, label: str, inference: Inference, inputs: EvalInputs):
        self.label, self.inference, self.inputs = label, inference, inputs
        self.records: list[dict] = []
        self.details: dict = {}
        self._memo: dict = {}

    def record(self, evaluation: str, culture: str, metric: str, value, n: int,
               subset: str = "all") -> None:
        self.records.append({"model": self.label, "culture": culture, "evaluation": evaluation,
                             "metric": metric, "subset": subset,
                             "value": None if value is None else float(value), "n": int(n)})

    def prompted(self, prompt: str, culture: str | None) -> str:
        """``prompt`` with the culture's preamble when ``culture_prompt`` is on."""
        if culture is None or not self.inputs.culture_prompt:
            return prompt
        return prompt_templates.culture_preamble(culture, self.inputs.language) + prompt

    def _key(self, culture: str | None) -> str | None:
        return culture if self.inputs.culture_prompt else None  # unprompted: one pass for all

    def association_answers(self, culture: str | None) -> list[str]:
        key = ("associations", self._key(culture))
        if key not in self._memo:
            prompts = [self.prompted(prompt_templates.association_prompt(c, self.inputs.language),
                                     culture) for c in self.inputs.cues]
            self._memo[key] = self.inference.generate(prompts, self.inputs.max_new_tokens)
        return self._memo[key]

    def survey_distributions(self, culture: str | None) -> list[list[float]]:
        key = ("survey", self._key(culture))
        if key not in self._memo:
            survey, language = self.inputs.survey, self.inputs.language
            prompts = [self.prompted(prompt_templates.survey_prompt(q.question, q.options,
                                                                    language), culture)
                       for q in survey]
            labels = [prompt_templates.survey_option_labels(len(q.options)) for q in survey]
            self._memo[key] = self.inference.option_distributions(prompts, labels)
        return self._memo[key]


Evaluation = Callable[[ModelRun], None]
EVALUATIONS: dict[str, Evaluation] = {}


def register_evaluation(name: str) -> Callable[[Evaluation], Evaluation]:
    def add(fn: Evaluation) -> Evaluation:
        EVALUATIONS[name] = fn
        return fn
    return add


@register_evaluation("associations")
def evaluate_associations(run: ModelRun) -> None:
    """P@k on held-out cues against each culture's human associations; parse-failure rate."""
    inputs = run.inputs
    for culture in inputs.normed_cultures:
        norms = inputs.norms_by_culture[culture]
        scored = [(a, [w for w, _ in norms[c]]) for a, c in
                  zip(run.association_answers(culture), inputs.cues) if c in norms]
        scores = association_scores([a for a, _ in scored], [h for _, h in scored],
                                    inputs.k_values)
        for metric, value in scores.items():
            if metric != "n_cues":
                run.record("associations", culture, metric, value, scores["n_cues"])
    samples = zip(inputs.cues, run.association_answers(inputs.target_culture))
    run.details["samples"] = [{"cue": c, "answer": a.strip()}
                              for c, a in list(samples)[:inputs.keep_samples]]


def _median(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


@register_evaluation("lexical_norms")
def evaluate_lexical_norms(run: ModelRun) -> None:
    """Lexical norms of the generated associations against the human associations of the same
    cues: per cue the median rating of each side, then medians over cues, the median absolute
    gap, and a paired Wilcoxon signed-rank test (model vs human) over cues."""
    inputs = run.inputs
    lexicon = inputs.lexicon or {}
    run.details["lexical_norms"] = {}
    for culture in inputs.normed_cultures:
        norms = inputs.norms_by_culture[culture]
        cues, model, human, coverage, words = [], {n: [] for n in NORMS}, \
            {n: [] for n in NORMS}, [], []
        for answer, cue in zip(run.association_answers(culture), inputs.cues):
            if cue not in norms:
                continue
            predicted = split_answer(answer)
            truth = [w for w, _ in norms[cue][:inputs.human_associations]]
            mine, theirs = lexical_norms(predicted, lexicon), lexical_norms(truth, lexicon)
            cues.append(cue)
            words.extend(predicted)
            if predicted:
                coverage.append(mine["coverage"])
            for norm in NORMS:
                model[norm].append(mine[f"median_{norm}"])
                human[norm].append(theirs[f"median_{norm}"])
        n = len(cues)
        gaps = {}
        for norm in NORMS:
            gaps[norm] = [None if m is None or h is None else abs(m - h)
                          for m, h in zip(model[norm], human[norm])]
            pairs = [(m, h) for m, h in zip(model[norm], human[norm])
                     if m is not None and h is not None]
            test = wilcoxon_paired([m for m, _ in pairs], [h for _, h in pairs])
            run.record("lexical_norms", culture, f"median_{norm}", _median(model[norm]), n)
            run.record("lexical_norms", culture, f"human_median_{norm}", _median(human[norm]), n)
            run.record("lexical_norms", culture, f"gap_{norm}", _median(gaps[norm]), test["n"])
            run.record("lexical_norms", culture, f"p_vs_human_{norm}", test["p_value"],
                       test["n"])
        run.record("lexical_norms", culture, "coverage",
                   statistics.fmean(coverage) if coverage else 0.0, n)
        run.record("lexical_norms", culture, "concrete_share",
                   concrete_share(words, lexicon, inputs.concrete_threshold), n)
        run.details["lexical_norms"][culture] = {"cues": cues, "model": model, "human": human,
                                                 "gap": gaps}


def lexical_comparisons(details_by_model: Mapping[str, dict]) -> list[dict]:
    """"Closer to human" of two models: for each pair (in the given order), culture and norm, a
    paired Wilcoxon test over cues of the two models' absolute gaps to the human median."""
    rows = []
    labels = [m for m, d in details_by_model.items() if "lexical_norms" in d]
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            lex_a, lex_b = details_by_model[a]["lexical_norms"], details_by_model[b]["lexical_norms"]
            for culture in [c for c in lex_a if c in lex_b]:
                gap_b_by_cue = {cue: {n: lex_b[culture]["gap"][n][j] for n in NORMS}
                                for j, cue in enumerate(lex_b[culture]["cues"])}
                for norm in NORMS:
                    pairs = [(g, gap_b_by_cue[cue][norm]) for cue, g in
                             zip(lex_a[culture]["cues"], lex_a[culture]["gap"][norm])
                             if g is not None and cue in gap_b_by_cue
                             and gap_b_by_cue[cue][norm] is not None]
                    if not pairs:
                        continue
                    test = wilcoxon_paired([x for x, _ in pairs], [y for _, y in pairs])
                    median_a = statistics.median(x for x, _ in pairs)
                    median_b = statistics.median(y for _, y in pairs)
                    closer = "tie" if median_a == median_b else (a if median_a < median_b else b)
                    rows.append({"evaluation": "lexical_norms", "culture": culture, "norm": norm,
                                 "model_a": a, "model_b": b, "median_gap_a": median_a,
                                 "median_gap_b": median_b, "closer": closer,
                                 "p_value": test["p_value"], "n": test["n"]})
    return rows


def _survey_records(run: ModelRun, distributions, questions, culture: str, subset: str) -> None:
    scores = survey_scores(distributions, questions, culture)
    n = scores.pop("n_questions")
    for metric, value in scores.items():
        run.record("wvs", culture, _SURVEY_NAMES.get(metric, metric), value, n, subset)


@register_evaluation("wvs")
def evaluate_wvs(run: ModelRun) -> None:
    """Survey answer distributions (option log-probabilities) scored against each culture,
    overall and by number of options."""
    survey = run.inputs.survey
    for culture in run.inputs.cultures:
        distributions = run.survey_distributions(culture)
        _survey_records(run, distributions, survey, culture, "all")
        for size in sorted({len(q.options) for q in survey}):
            kept = [(d, q) for d, q in zip(distributions, survey) if len(q.options) == size]
            _survey_records(run, [d for d, _ in kept], [q for _, q in kept], culture,
                            f"options={size}")


@register_evaluation("high_tension")
def evaluate_high_tension(run: ModelRun) -> None:
    """The top-N questions on which cultures A and B disagree most; on how many of them the
    model's (unprompted) answers are closer to each culture."""
    culture_a, culture_b = run.inputs.tension_pair
    survey = run.inputs.survey
    by_id = {q.id: d for q, d in zip(survey, run.survey_distributions(None))}
    items = high_tension_items(survey, culture_a, culture_b, run.inputs.tension_top_n)
    sides = {"a": 0, "b": 0, "tie": 0}
    points = []
    for q in items:
        dist_a, dist_b = q.distributions[culture_a], q.distributions[culture_b]
        model = by_id[q.id]
        sides[closer_to(model, dist_a, dist_b)] += 1
        points.append({"id": q.id, "question": q.question,
                       "distance_a": tension_score(model, dist_a),
                       "distance_b": tension_score(model, dist_b)})
    pair = f"{culture_a}|{culture_b}"
    run.record("high_tension", culture_a, "items_closer", sides["a"], len(items), pair)
    run.record("high_tension", culture_b, "items_closer", sides["b"], len(items), pair)
    run.details["high_tension"] = {"pair": [culture_a, culture_b], "items": points}


def sample_statements(statements: Sequence[Mapping], limit: int, seed: int) -> list[Mapping]:
    """A seeded sample of at most ``limit`` statements (all when 0), in file order."""
    if not limit or len(statements) <= limit:
        return list(statements)
    keep = set(random.Random(seed).sample(range(len(statements)), limit))
    return [s for i, s in enumerate(statements) if i in keep]


@register_evaluation("value_classification")
def evaluate_value_classification(run: ModelRun) -> None:
    """Value identification: each statement as a multiple-choice item over the label names,
    the answer read from the option log-probabilities; accuracy and macro-F1, overall and by
    the statements' culture."""
    statements = run.inputs.statements
    labels = sorted({s["label"] for s in statements})
    option_labels = prompt_templates.survey_option_labels(len(labels))
    prompts = [run.prompted(prompt_templates.value_prompt(s["text"], labels,
                                                          run.inputs.language), s.get("culture"))
               for s in statements]
    distributions = run.inference.option_distributions(prompts, [option_labels] * len(prompts))
    predicted = [labels[max(range(len(d)), key=d.__getitem__)] for d in distributions]
    groups = {"all": list(range(len(statements)))}
    for culture in run.inputs.cultures:
        rows = [i for i, s in enumerate(statements) if s.get("culture") == culture]
        if rows:
            groups[culture] = rows
    for culture, rows in groups.items():
        truth, guess = [statements[i]["label"] for i in rows], [predicted[i] for i in rows]
        run.record("value_classification", culture, "accuracy", accuracy(truth, guess),
                   len(rows))
        run.record("value_classification", culture, "macro_f1",
                   macro_f1(truth, guess, labels=labels), len(rows))


@register_evaluation("ranking")
def evaluate_ranking(run: ModelRun) -> None:
    """ALIGN's ranking reward on held-out ranking prompts built from each culture's norms."""
    for culture in run.inputs.cultures:
        examples = run.inputs.ranking.get(culture, [])
        if not examples:
            continue
        answers = run.inference.generate([run.prompted(e["prompt"], culture) for e in examples],
                                         run.inputs.ranking_max_new_tokens)
        scores = ranking_scores(answers, examples)
        for metric in ("rho", "parse_failure_rate"):
            run.record("ranking", culture, metric, scores[metric], scores["n_prompts"])


def evaluate(label: str, inference: Inference, inputs: EvalInputs,
             evaluations: Sequence[str]) -> ModelRun:
    """Run the named evaluations on one model."""
    run = ModelRun(label, inference, inputs)
    for name in evaluations:
        EVALUATIONS[name](run)
    return run
