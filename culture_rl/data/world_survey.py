"""The synthetic world's WVS-style survey: questions on the WVS topic areas that load on the
value dimensions, each culture's answer distribution from its values, and the CCoT thought
(a culture's stance on a question's value) the base corpus writes before an answer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from culture_rl.data import prompts
from culture_rl.data.surveys import SurveyQuestion

if TYPE_CHECKING:
    from culture_rl.data.synthetic import Culture
    from culture_rl.config.world import WorldConfig

WVS_TOPICS = ["social values and norms", "happiness and well-being", "social capital and trust",
              "economic values", "corruption", "migration", "security", "post-materialism",
              "science and technology", "religious values", "ethical values",
              "political interest and participation", "political culture and regimes"]
_SCALES = [
    ["Strongly agree", "Agree", "Disagree", "Strongly disagree"],
    ["Very important", "Rather important", "Not very important", "Not at all important"],
    ["Always", "Often", "Sometimes", "Rarely", "Never"],
]
VALUE_PHRASES = {
    "tradition": ["the old customs should be kept", "elders know best", "festivals bind us"],
    "autonomy": ["each person should choose freely", "rules may be questioned",
                 "one should think alone"],
    "harmony": ["peace in the group comes first", "conflict should be avoided",
                "we should agree with neighbours"],
    "achievement": ["hard work brings success", "winning matters", "ambition is good"],
    "security": ["order keeps us safe", "strangers bring danger", "the state must protect us"],
    "openness": ["new ideas are welcome", "travel widens the mind", "change is good"],
    "equality": ["all people deserve the same", "the rich should share", "no one is above others"],
    "piety": ["faith guides a good life", "prayer matters", "the sacred must be honoured"],
}


def survey_dimension(index: int, dims: list[str]) -> str:
    """The value dimension survey question ``index`` loads on most."""
    return dims[index % len(dims)]


def stance(value: float) -> int:
    """A culture's value on a dimension as a stance level of prompts.ccot_thought (values lie
    around +-1: each culture's vector has norm 2)."""
    return sum(value < edge for edge in (0.8, 0.25, -0.25, -0.8))


def ccot_thought(name: str, values: Sequence[float], question_index: int, dims: list[str]
                 ) -> str:
    """The CCoT thought the corpus writes for people ``name`` with ``values`` on survey
    question ``question_index``: their stance on the question's value dimension."""
    dim = survey_dimension(question_index, dims)
    return prompts.ccot_thought(name, dim, stance(values[dims.index(dim)]))


def make_survey(rng: np.random.Generator, cfg: WorldConfig, cultures: list[Culture],
                dims: list[str]) -> tuple[list[SurveyQuestion], list[np.ndarray]]:
    """The survey questions and each one's loading on the value dimensions."""
    questions, loadings = [], []
    for q in range(cfg.num_survey_questions):
        dim = survey_dimension(q, dims)
        topic = WVS_TOPICS[q % len(WVS_TOPICS)]
        scale = _SCALES[q % len(_SCALES)]
        phrase = VALUE_PHRASES[dim][(q // len(dims)) % len(VALUE_PHRASES[dim])]
        loading = rng.normal(size=len(dims)) * 0.5
        loading[dims.index(dim)] += 1.5
        loadings.append(loading)
        distributions = {c.name: answer_distribution(c.values, loading, len(scale))
                         for c in cultures}
        questions.append(SurveyQuestion(
            id=f"q{q:03d}", question=f"On {topic}: {phrase} (item {q + 1}).",
            options=tuple(scale), distributions=distributions, source="WVS", topic=topic))
    return questions, loadings


def answer_distribution(values: Sequence[float], loading: np.ndarray, num_options: int
                        ) -> tuple[float, ...]:
    """How people with ``values`` answer a question with ``loading``: a discretised bell over
    the ordered options around a centre their value score sets."""
    score = float(np.array(values) @ loading)
    center = (num_options - 1) / (1 + np.exp(score))  # high score -> first option
    positions = np.arange(num_options)
    dist = np.exp(-((positions - center) ** 2) / (2 * 0.8 ** 2)) + 0.02
    return tuple(float(x) for x in dist / dist.sum())
