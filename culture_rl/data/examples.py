"""ALIGN training examples built from association norms.

- cue split 70/20/10 with seed 42 (as ALIGN);
- SFT examples: resample about 70 % of a cue's associations, keep them in frequency order and ask
  for the list, so the model learns the culture's association *distribution*, not one fixed list;
- ranking examples for PPO: 10 sampled associations, target = the human frequency order.
"""

from __future__ import annotations

import random
from typing import Sequence

from culture_rl.data import prompts
from culture_rl.data.swow import AssociationNorms

SPLITS = ("train", "val", "test")


def split_cues(cues: Sequence[str], seed: int = 42,
               fractions: tuple[float, float, float] = (0.7, 0.2, 0.1)) -> dict[str, list[str]]:
    """Split cues into train/val/test; sorted first so the split ignores input order."""
    ordered = sorted(set(cues))
    random.Random(seed).shuffle(ordered)
    n_train = round(fractions[0] * len(ordered))
    n_val = round(fractions[1] * len(ordered))
    return {"train": ordered[:n_train], "val": ordered[n_train:n_train + n_val],
            "test": ordered[n_train + n_val:]}


def resample_associations(associations: Sequence[tuple[str, int]], fraction: float,
                          rng: random.Random, max_items: int | None = None) -> list[str]:
    """Keep ``fraction`` of the associations (at least one), in their frequency order."""
    n_keep = max(1, round(fraction * len(associations)))
    kept = sorted(rng.sample(range(len(associations)), n_keep))
    words = [associations[i][0] for i in kept]
    return words[:max_items] if max_items else words


def build_sft_examples(norms: AssociationNorms, cues: Sequence[str], *, language: str = "en",
                       fraction: float = 0.7, examples_per_cue: int = 4,
                       max_associations: int = 10, seed: int = 42) -> list[dict]:
    """Prompt/completion pairs (TRL's prompt-completion form: loss on the completion only)."""
    rng = random.Random(seed)
    examples = []
    for cue in cues:
        associations = norms.get(cue)
        if not associations:
            continue
        for _ in range(examples_per_cue):
            words = resample_associations(associations, fraction, rng, max_associations)
            examples.append({"prompt": prompts.association_prompt(cue, language),
                             "completion": prompts.association_completion(words, language),
                             "cue": cue})
    return examples


def human_order(associations: Sequence[tuple[str, int]]) -> list[str]:
    """Frequency order, ties broken alphabetically (as ALIGN's ranking reward needs)."""
    return [w for w, _ in sorted(associations, key=lambda item: (-item[1], item[0]))]


def build_ranking_examples(norms: AssociationNorms, cues: Sequence[str], *, n_words: int = 10,
                           language: str = "en", seed: int = 42, per_cue: int = 1) -> list[dict]:
    """PPO ranking prompts: ``n_words`` sampled associations shown shuffled (``per_cue``
    independent samples per cue); cues with fewer associations are skipped."""
    rng = random.Random(seed)
    examples = []
    for cue in [c for c in cues for _ in range(per_cue)]:
        associations = norms.get(cue, [])
        if len(associations) < n_words:
            continue
        sampled = rng.sample(list(associations), n_words)
        shown = [w for w, _ in sampled]
        rng.shuffle(shown)
        examples.append({"prompt": prompts.ranking_prompt(cue, shown, language), "cue": cue,
                         "words": shown, "human_order": human_order(sampled)})
    return examples
