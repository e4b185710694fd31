"""``culture-rl elicit``: the base model's own associations to the world's cues, once, as the
dominant culture's norms (``world.base_associations``).

A real model's default answers are its own culture's; ALIGN, CultureSPA and CALM set out to move
them towards another's. The synthetic world gives its dominant culture made-up preferences,
which a real model does not share; reading the dominant culture's responses off the real model
makes the bias the methods correct the model's own.

Each cue's association prompt (no culture preamble: the model's default voice, through its chat
template) is answered ``world.elicit_samples`` times by sampling at
``world.elicit_temperature``; a word's count is the number of answers that name it. Sampling,
not the greedy answer alone: a small model's greedy answer mostly repeats the cue
(SmolLM2-135M-Instruct: "1. dog 2. dog ..."), while its samples name related words. Kept are
single words other than the cue and the prompt's own words; in the English world only words
Brysbaert et al. rate, which drops the fragments of the model's chatty sentences and words it
makes up. The result is an aggregated SWOW CSV (cue, response, freq) with every kept word,
written once by rename and readable by any SWOW tool; the world takes from it the words at
least ``world.base_association_min_count`` answers named (one answer's stray word is noise).

It runs in the calling process (on a GPU when torch sees one): a few hundred short
generations do not need the cluster.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from culture_rl.config import ExperimentConfig
from culture_rl.data import prompts
from culture_rl.data.english_words import brysbaert_concreteness
from culture_rl.data.swow import load_swow, write_swow_aggregated
from culture_rl.data.synthetic import generate_world
from culture_rl.core.errors import ConfigError
from culture_rl.inference.generation import generate_answers
from culture_rl.eval.metrics import split_answer
from culture_rl.models.loading import load_model, load_tokenizer, prepare_model

_SINGLE_WORD = re.compile(r"^[a-z][a-z'-]*$")


@dataclass
class Elicited:
    path: Path
    cues: int            # cues of the world
    cues_with_words: int  # cues the model named at least one kept word for
    mean_words: float    # distinct kept words per cue
    written: bool        # False when the file was already there


def kept_words(answer_words: list[str], cue: str, vocabulary: set[str] | None,
               language: str = "en") -> list[str]:
    """The words of one parsed answer that count as an association of ``cue``: single words,
    not the cue, not a word of the prompt (small models parrot "cue", "words", "common"), and
    (when ``vocabulary`` is given) rated words only."""
    prompt_words = set(re.findall(r"[a-z]+", prompts.association_prompt(cue, language).lower()))
    return [w for w in answer_words
            if _SINGLE_WORD.match(w) and w not in prompt_words
            and (vocabulary is None or w in vocabulary)]


def count_associations(cues: list[str], answers: list[list[str]], samples: int,
                       vocabulary: set[str] | None, language: str = "en"
                       ) -> dict[str, list[tuple[str, int]]]:
    """cue -> [(word, number of answers naming it)], most named first, ties alphabetical;
    ``answers`` holds ``samples`` parsed answers per cue, cue by cue."""
    norms = {}
    for index, cue in enumerate(cues):
        counts: Counter[str] = Counter()
        for words in answers[index * samples:(index + 1) * samples]:
            counts.update(set(kept_words(words, cue, vocabulary, language)))
        norms[cue] = sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))
    return norms


def elicit_base_associations(config: ExperimentConfig) -> Elicited:
    """Write ``world.base_associations`` from ``model.path`` (kept as it is when it exists)."""
    target = config.world.base_associations
    if target is None:
        raise ConfigError("set world.base_associations to the CSV file to write",
                          field="world.base_associations")
    if config.model.path == "tiny":
        raise ConfigError("elicit reads a pretrained model's associations: set model.path "
                          "(e.g. smollm2-135m-instruct)", field="model.path")
    path = Path(target).expanduser()
    # The cues do not depend on the base associations, so the world without them has them all.
    world = generate_world(config.world.model_copy(update={"base_associations": None}))
    if path.is_file():
        norms = load_swow(path)
        return _summary(path, world.cues, norms, written=False)
    answers = _sampled_answers(config, world.cues)
    vocabulary = set(brysbaert_concreteness()) if config.world.vocabulary == "english" else None
    norms = count_associations(world.cues, answers, config.world.elicit_samples, vocabulary,
                               config.data.language)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    write_swow_aggregated({c: pairs for c, pairs in norms.items() if pairs}, partial)
    partial.rename(path)
    return _summary(path, world.cues, norms, written=True)


def _sampled_answers(config: ExperimentConfig, cues: list[str]) -> list[list[str]]:
    model_path = prepare_model(config.model.path)
    tokenizer = load_tokenizer(model_path, config.model.trust_remote_code,
                               config.model.chat_template)
    model = load_model(model_path, config.model.dtype, config.model.trust_remote_code)
    if torch.cuda.is_available():
        model = model.to("cuda")
    torch.manual_seed(config.world.seed)  # the same model and world elicit the same words
    samples = config.world.elicit_samples
    asked = [prompts.association_prompt(cue, config.data.language)
             for cue in cues for _ in range(samples)]
    answers = generate_answers(model, tokenizer, asked, max_new_tokens=config.eval.max_new_tokens,
                               batch_size=32, sample=True,
                               temperature=config.world.elicit_temperature)
    return [split_answer(answer) for answer in answers]


def _summary(path: Path, cues: list[str], norms, written: bool) -> Elicited:
    named = [len(norms.get(cue) or []) for cue in cues]
    return Elicited(path, len(cues), sum(n > 0 for n in named),
                    sum(named) / len(cues) if cues else 0.0, written)
