"""A culture-dependent value-identification task built from a synthetic world (CALM).

The world's own value statements (:func:`culture_rl.data.synthetic._make_statements`) give each
value dimension a fixed phrase, so the label is the phrase and any classifier reaches 100 %. In
this task the *same act means a different value in each culture*, and the held-out statements
are worded in ways training never shows:

- **Acts** are pairs of made-up words of the world's lexicon (response words, not cues): an object
  and the kind word of its group ("the maku rokuse"), ``acts_per_value`` acts in each of D groups
  (D = the world's value dimensions), one kind word per group.
- **Culture-dependent meaning**, from the world's culture value loadings: an act of group g
  expresses, in culture c, the value dimension culture c ranks g-th (its values sorted from the
  highest down). Cultures that order their values differently read the same act differently.
- **Unseen (act, culture) pairs**: every act's meaning is withheld from training in exactly one
  culture (``unseen_per_culture`` acts per culture and group). Its statements there are only
  held out (subset ``unseen``): to get them right a model has to read the act's group (its kind)
  and apply this culture's reading of it. Answering with the meaning the act has elsewhere (the
  other cultures' reading) is the culture-blind error.
- **Held-out wording**: training and held-out statements use disjoint sentence frames, verbs,
  subjects and distractor clauses (a clause naming one of the world's cues, which carries no
  label). Held-out statements of pairs seen in training form the subset ``seen``.
- **Label noise**: a seeded share ``label_noise`` of the *training* labels is replaced by another
  dimension; held-out labels are clean.

Rows are ``{id, text, label, culture, split ("train" | "heldout"), subset ("train" | "seen" |
"unseen"), act, kind, group}``; the generator is a pure function of (world, settings, seed), and the
labels are balanced per culture (each dimension is one group's reading).
"""

from __future__ import annotations

import random

# Mostly words of the base corpus (single tokens of the tiny tokenizer), so the statements stay
# short; training and held-out wording share no frame, verb, subject or distractor clause.
TRAIN_FRAMES = ["{Subject} in {culture} {verb} the {act}{distractor}.",
                "In {culture}, {subject} {verb} the {act}{distractor}.",
                "{Subject} of {culture} often {verb} the {act}{distractor}."]
HELDOUT_FRAMES = ["For people in {culture}, {subject} {verb} the {act}{distractor}.",
                  "Then {subject} of {culture} very often {verb} the {act}{distractor}."]
TRAIN_VERBS = ["bring", "know", "choose", "kept"]
HELDOUT_VERBS = ["trust", "question"]
TRAIN_SUBJECTS = ["my family", "the village", "the young", "most workers"]
HELDOUT_SUBJECTS = ["the elders", "neighbours"]
TRAIN_DISTRACTORS = [" before the {cue} festival", " when the {cue} comes"]
HELDOUT_DISTRACTORS = [" with the {cue} customs"]


def value_reading(values, dims: list[str]) -> list[str]:
    """The dimension an act of group g expresses in a culture with these values: the culture's
    g-th highest valued dimension (ties by dimension order)."""
    order = sorted(range(len(dims)), key=lambda i: (-float(values[i]), i))
    return [dims[i] for i in order]


def culture_dependent_statements(world, *, acts_per_value: int = 6, unseen_per_culture: int = 2,
                                 train_per_pair: int = 6, heldout_per_pair: int = 1,
                                 heldout_per_unseen_pair: int = 2, label_noise: float = 0.1,
                                 distractor_rate: float = 0.5, seed: int = 0) -> list[dict]:
    """The task's rows (see the module docstring) for a :class:`CultureWorld`. Raises
    ValueError naming the setting when the world is too small for it."""
    dims = list(world.value_dimensions)
    cultures = list(world.cultures)
    if acts_per_value < len(cultures) * unseen_per_culture:
        raise ValueError(f"acts_per_value {acts_per_value} is less than cultures x "
                         f"unseen_per_culture = {len(cultures)} x {unseen_per_culture}: every "
                         "act must stay seen in all but one culture")
    if not 0 <= label_noise < 1:
        raise ValueError(f"label_noise {label_noise} is not in [0, 1)")
    cue_set = set(world.cues)
    words = sorted(w for w in world.lexicon if w not in cue_set)
    needed = (acts_per_value + 1) * len(dims)
    if len(words) < needed:
        raise ValueError(f"the world's lexicon has {len(words)} non-cue words, fewer than "
                         f"(acts_per_value + 1) x value dimensions = {needed}")
    rng = random.Random(f"culture-dependent/{seed}")
    rng.shuffle(words)
    kinds = words[:len(dims)]
    words = words[len(dims):]
    groups = [words[g * acts_per_value:(g + 1) * acts_per_value] for g in range(len(dims))]
    readings = {c.name: value_reading(c.values, dims) for c in cultures}
    # unseen[(culture, act)]: each group's first cultures x unseen_per_culture acts (in a seeded
    # order) are withheld in one culture each.
    unseen: set[tuple[str, str]] = set()
    for acts in groups:
        order = list(acts)
        rng.shuffle(order)
        for k, culture in enumerate(cultures):
            for act in order[k * unseen_per_culture:(k + 1) * unseen_per_culture]:
                unseen.add((culture.name, act))
    cues = list(world.cues)

    def text(frames, verbs, subjects, distractors, culture, act) -> str:
        distractor = ""
        if rng.random() < distractor_rate:
            distractor = rng.choice(distractors).format(cue=rng.choice(cues))
        subject = rng.choice(subjects)
        return rng.choice(frames).format(Subject=subject[0].upper() + subject[1:],
                                         subject=subject, culture=culture,
                                         verb=rng.choice(verbs), act=act,
                                         distractor=distractor)

    rows = []
    for culture in cultures:
        for g, acts in enumerate(groups):
            label = readings[culture.name][g]
            for act in acts:
                hidden = (culture.name, act) in unseen
                base = {"culture": culture.name, "act": act, "kind": kinds[g], "group": g}
                phrase = f"{act} {kinds[g]}"
                if not hidden:
                    for i in range(train_per_pair):
                        noisy = label
                        if label_noise and rng.random() < label_noise:
                            noisy = rng.choice([d for d in dims if d != label])
                        rows.append({**base, "id": f"{culture.name}-{act}-train{i}",
                                     "text": text(TRAIN_FRAMES, TRAIN_VERBS, TRAIN_SUBJECTS,
                                                  TRAIN_DISTRACTORS, culture.name, phrase),
                                     "label": noisy, "split": "train", "subset": "train"})
                count = heldout_per_unseen_pair if hidden else heldout_per_pair
                for i in range(count):
                    rows.append({**base, "id": f"{culture.name}-{act}-heldout{i}",
                                 "text": text(HELDOUT_FRAMES, HELDOUT_VERBS, HELDOUT_SUBJECTS,
                                              HELDOUT_DISTRACTORS, culture.name, phrase),
                                 "label": label, "split": "heldout",
                                 "subset": "unseen" if hidden else "seen"})
    return rows
