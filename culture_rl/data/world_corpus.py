"""The synthetic world's base corpus: what the tiny base model is pretrained on. Dominated by
culture 0 (untagged association, ranking and survey answers), with culture-tagged documents of
every culture, and optionally questionnaires, CCoT answers, other communities' CCoT answers and
withheld (question, culture) pairs (see culture_rl/data/synthetic.py)."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import numpy as np

from culture_rl.data import prompts
from culture_rl.data.examples import human_order, resample_associations
from culture_rl.data.invented_words import make_words
from culture_rl.data.surveys import SurveyQuestion
from culture_rl.data.swow import AssociationNorms
from culture_rl.data.world_survey import answer_distribution, ccot_thought

if TYPE_CHECKING:
    from culture_rl.data.synthetic import Culture
    from culture_rl.config.world import WorldConfig


def community_ccot_docs(cfg: WorldConfig, dims: list[str], survey: list[SurveyQuestion],
                        loadings: list[np.ndarray], taken: set[str]) -> list[str]:
    """CCoT survey answers of ``world.ccot_communities`` further communities, one per question
    each: many examples of how where people stand on a value shapes their answer, which a base
    can carry over to a culture whose answer it has not read. Their own generator keeps a
    world without them unchanged."""
    if not cfg.ccot_communities:
        return []
    rng = np.random.default_rng(cfg.seed + 3)
    names = [w.capitalize() for w in make_words(rng, cfg.ccot_communities, 3, taken)]
    docs = []
    for name in names:
        values = rng.normal(size=len(dims))
        values = 2.0 * values / np.linalg.norm(values)  # as the cultures' values
        for index, (question, loading) in enumerate(zip(survey, loadings)):
            dist = answer_distribution(values, loading, len(question.options))
            answer = prompts.survey_option_labels(len(dist))[int(rng.choice(len(dist), p=dist))]
            docs.append(prompts.ccot_prompt(question.question, question.options, name)
                        + ccot_thought(name, values, index, dims)
                        + prompts.ccot_answer_suffix() + answer)
    return docs


def withheld_survey_pairs(cfg: WorldConfig, cultures: list[Culture],
                          survey: list[SurveyQuestion]) -> set[tuple[str, str]]:
    """The (question id, culture) pairs without culture-tagged survey answers in the corpus
    (``world.withheld_survey_share`` of the non-dominant cultures' pairs, seeded)."""
    pairs = [(q.id, c.name) for q in survey for c in cultures[1:]]
    count = round(cfg.withheld_survey_share * len(pairs))
    return set(random.Random(cfg.seed + 2).sample(pairs, count)) if count else set()


def make_corpus(cfg: WorldConfig, cultures: list[Culture], dims: list[str], cues: list[str],
                norms: dict[str, AssociationNorms], survey: list[SurveyQuestion],
                statements: list[dict]) -> list[str]:
    rng = random.Random(cfg.seed)
    dominant = cultures[0].name
    docs = []
    for cue in cues:
        for _ in range(cfg.base_docs_per_cue):  # untagged: the dominant culture's answers
            words = resample_associations(norms[dominant][cue], 0.7, rng, 10)
            docs.append(prompts.association_prompt(cue) + prompts.association_completion(words))
        for culture in cultures:
            for _ in range(cfg.tagged_docs_per_cue):
                words = resample_associations(norms[culture.name][cue], 0.7, rng, 10)
                docs.append(prompts.culture_preamble(culture.name) + prompts.association_prompt(cue)
                            + prompts.association_completion(words))
        associations = norms[dominant][cue]
        for _ in range(cfg.ranking_docs_per_cue if len(associations) >= 4 else 0):
            sampled = rng.sample(associations, rng.randint(4, min(10, len(associations))))
            shown = [w for w, _ in sampled]
            rng.shuffle(shown)
            docs.append(prompts.ranking_prompt(cue, shown)
                        + prompts.ranking_completion(human_order(sampled)))
    withheld = withheld_survey_pairs(cfg, cultures, survey)
    # The options below draw from their own generator, so a world without them is unchanged.
    extra = random.Random(cfg.seed + 1)
    for index, question in enumerate(survey):
        labels = prompts.survey_option_labels(len(question.options))
        prompt = prompts.survey_prompt(question.question, question.options)
        for _ in range(cfg.base_docs_per_cue):
            answer = rng.choices(labels, weights=question.distributions[dominant])[0]
            docs.append(prompt + answer)
        for culture in cultures:
            if (question.id, culture.name) in withheld:
                continue
            for _ in range(cfg.tagged_docs_per_cue):
                answer = rng.choices(labels, weights=question.distributions[culture.name])[0]
                docs.append(prompts.culture_preamble(culture.name) + prompt + answer)
            thought = ccot_thought(culture.name, culture.values, index, dims)
            head = prompts.ccot_prompt(question.question, question.options, culture.name)
            for _ in range(cfg.ccot_docs_per_question):
                answer = extra.choices(labels, weights=question.distributions[culture.name])[0]
                docs.append(head + thought + prompts.ccot_answer_suffix() + answer)
    by_topic: dict[str, list[SurveyQuestion]] = {}
    for question in survey:
        by_topic.setdefault(question.topic or "", []).append(question)
    for topic, questions in by_topic.items():
        for _ in range(cfg.questionnaire_docs_per_topic if len(questions) >= 2 else 0):
            listed = rng.sample(questions, min(len(questions), rng.randint(2, 3)))
            docs.append(prompts.questionnaire(topic, [(q.question, q.options) for q in listed]))
    docs.extend(s["text"] for s in statements)
    rng.shuffle(docs)
    return docs
