"""The ``spa:`` config section: the CultureSPA pipeline (culture_rl/spa).

``ExperimentConfig.spa`` (culture_rl/config/__init__.py).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from culture_rl.config.base import ConfigSection, section_with_defaults
from culture_rl.config.train import TrainConfig

WVS_TOPIC_AREAS = ["social values and norms", "happiness and well-being",
                   "social capital and trust", "economic values", "corruption", "migration",
                   "security", "post-materialism", "science and technology",
                   "religious values", "ethical values", "political interest and participation",
                   "political culture and regimes"]


class SpaConfig(ConfigSection):
    """``culture-rl spa``: the CultureSPA pipeline (culture_rl/spa)."""

    model_path: str = Field("pretrain", description="Model the pipeline starts from (it "
                            "generates the data and is fine-tuned): 'pretrain' (this run's "
                            "tiny base), a model folder or a local Hugging Face name.")
    topics: list[str] = Field(WVS_TOPIC_AREAS, min_length=1, description="Culture topics "
                              "questions are generated for (default: the 13 WVS topic areas).")
    cultures: list[str] = Field([], description="Cultures to align to (names, or indices of the "
                                "synthetic world). Empty: every culture of the survey.")
    seed_questions: int = Field(2, ge=1, description="Example survey questions of the topic "
                                "shown in each generation prompt.")
    questions_per_topic: int = Field(8, ge=1, description="Generation attempts per topic "
                                     "(sampled; duplicates and malformed ones are dropped).")
    include_seed_questions: bool = Field(False, description="Also use the seed survey's own "
                                         "questions as instances (False: only the generated "
                                         "ones, as in the paper).")
    generation_temperature: float = Field(1.0, gt=0, description="Sampling temperature of "
                                          "question generation.")
    generation_max_new_tokens: int = Field(96, gt=0, description="Longest generated question "
                                           "with its options.")
    question_prompt: Literal["auto", "continuation", "instruction"] = Field(
        "auto", description="How the model is asked for a question: 'continuation' (a "
        "questionnaire of seed questions it continues: a base model), 'instruction' (a social "
        "scientist's role, the topic and numbered examples, a new question asked for as JSON: "
        "a chat model, as in the paper), or 'auto' (instruction when the model's tokenizer has "
        "a chat template).")
    aware_prompting: Literal["culture", "ccot"] = Field(
        "culture", description="How the culture-aware answers are read: 'culture' with the "
        "culture preamble only, 'ccot' after the model's own cultural chain of thought (it "
        "first writes what the culture values, then answers; CultureSPA combined with CCoT). "
        "The fine-tuning prompts name the culture either way, so 'ccot' distils what the "
        "model can recall into the answer it gives when just asked.")
    js_threshold: float = Field(0.1, ge=0, le=1, description="A question is culture-related "
                                "for a culture when the aware answer picks another option or "
                                "its distribution is further than this JS distance from the "
                                "unaware one.")
    modes: list[Literal["joint", "specific"]] = Field(
        ["joint", "specific"], min_length=1, description="Fine-tuning: 'joint' (one model, the "
        "culture in the prompt) and/or 'specific' (one LoRA adapter per culture, saved and "
        "served as one adapter set).")
    specific_culture_in_prompt: bool = Field(True, description="Culture-specific adapters "
                                             "also see the culture preamble in their prompts.")
    target: Literal["sampled", "proportional", "argmax"] = Field(
        "sampled", description="What an instance teaches: 'sampled' answers drawn from the "
        "culture-aware distribution (its spread), 'proportional' the same number of answers "
        "shared among the options in proportion to it (no sampling noise), or the 'argmax' "
        "answer only.")
    samples_per_instance: int = Field(8, ge=1, description="'sampled' / 'proportional': "
                                      "training rows per instance.")
    target_temperature: float = Field(1.0, gt=0, description="'sampled' / 'proportional': "
                                      "temperature of the culture-aware distribution the "
                                      "answers follow (<1 sharpens it toward its mode; 1: as "
                                      "the model gave it).")
    ccot: bool = Field(True, description="Also evaluate with cultural chain-of-thought "
                       "prompting (think about the culture's values, then answer).")
    ccot_max_new_tokens: int = Field(24, gt=0, description="Tokens of CCoT thoughts generated "
                                     "before the answer is read.")
    lm_guard_docs: int = Field(64, ge=1, description="Base-corpus documents (or eval rows) "
                               "whose LM loss guards general ability.")
    lm_guard_margin: float = Field(0.10, ge=0, description="The fine-tuned model's held-out LM "
                                   "loss may rise at most this fraction above the base "
                                   "model's (the report says whether it held).")
    train: section_with_defaults(
        TrainConfig, epochs=4, learning_rate=1e-3, warmup_ratio=0.05, micro_batch_size=8,
        logging_steps=10, eval_each_epoch=False
    ) = Field(description="LoRA fine-tuning on the culture-related instances (lora.* sets the "
              "adapter).")
