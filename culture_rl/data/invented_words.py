"""Made-up words for the invented world (``world.vocabulary: invented``, the default): cues
marked by their topic's last syllable and response pools per topic, which the tiny model learns
from scratch. :mod:`culture_rl.data.english_words` fills the same structure with real words."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from culture_rl.config.world import WorldConfig

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def make_words(rng: np.random.Generator, count: int, syllables: int, taken: set[str]
               ) -> list[str]:
    """``count`` new words of ``syllables`` consonant-vowel syllables, each added to ``taken``."""
    words: list[str] = []
    while len(words) < count:
        word = "".join(rng.choice(list(_CONSONANTS)) + rng.choice(list(_VOWELS))
                       for _ in range(syllables))
        if word not in taken:
            taken.add(word)
            words.append(word)
    return words


def vocabulary(rng: np.random.Generator, cfg: WorldConfig, taken: set[str]):
    """Made-up cues and response pools: (cues, topic of each cue, shared response pool per
    topic, each culture's specific pool per topic)."""
    # Cues belong to topics, marked by their last syllable (as words in a real language share
    # roots): a topic's cues draw on the topic's response pool, and each culture has its own
    # salient words per topic. What a culture prefers is therefore learnable across cues and
    # transfers to held-out cues of the same topic, as in real association data.
    markers = make_words(rng, cfg.num_topics, 1, taken)
    stems = make_words(rng, cfg.num_cues, 2, taken)
    cues = [stem + markers[i % cfg.num_topics] for i, stem in enumerate(stems)]
    topic_of = {cue: i % cfg.num_topics for i, cue in enumerate(cues)}
    shared_pools = [make_words(rng, cfg.shared_responses_per_cue + 2, 2, taken)
                    for _ in range(cfg.num_topics)]
    specific_pools = [[make_words(rng, cfg.specific_responses_per_cue + 1, 2, taken)
                       for _ in range(cfg.num_cultures)] for _ in range(cfg.num_topics)]
    return cues, topic_of, shared_pools, specific_pools
