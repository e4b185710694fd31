"""Preference pairs for the DPO stage: (prompt, chosen, rejected), read and checked.

Three sources (``dpo.pairs``): a JSON Lines file (the user's, or the reflection loop's
``<run>/reflect/pairs.jsonl``: each revision that beat its initial answer, the revision chosen)
and CultureSPA's culture-related instances (the culture-aware answer chosen over the
culture-unaware one, the culture named in the prompt: :func:`spa_pairs`). A bad row is one
:class:`~culture_rl.core.errors.DataError` naming the file and line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from culture_rl.core.errors import DataError
from culture_rl.data import prompts
from culture_rl.data.tabular import iter_jsonl

PAIR_FIELDS = ("prompt", "chosen", "rejected")


def read_pairs(path: str | Path) -> list[dict]:
    """The pairs of a JSON Lines file: string prompt, chosen and rejected, the answers
    different; other fields are ignored. The prompt and the chosen answer must say something;
    the rejected one may be blank (a model that answered nothing: the reflection loop's
    revision then beats an empty initial answer)."""
    pairs = []
    for line, row in iter_jsonl(path):
        for name in PAIR_FIELDS:
            value = row.get(name)
            if not isinstance(value, str):
                what = "missing" if value is None else f"a {type(value).__name__}, not a string"
                raise DataError(f"field {name!r} is {what} (a pair needs string prompt, chosen "
                                "and rejected)", path=path, line=line)
            if not value.strip() and name != "rejected":
                raise DataError(f"field {name!r} is blank", path=path, line=line)
        if row["chosen"].strip() == row["rejected"].strip():
            raise DataError("chosen and rejected are the same answer: the pair prefers "
                            "nothing", path=path, line=line)
        pairs.append({name: row[name] for name in PAIR_FIELDS})
    return pairs


SPA_FIELDS = ("question", "options", "culture", "aware", "unaware")


def read_spa_pairs(path: str | Path, language: str = "en") -> list[dict]:
    """The pairs of CultureSPA's culture-related instances (``<run>/spa/related/data.jsonl``,
    one instance a line as the ``related`` stage writes it): :func:`spa_pairs`."""
    instances = []
    for line, row in iter_jsonl(path):
        missing = [name for name in SPA_FIELDS if name not in row]
        if missing:
            raise DataError(f"not a CultureSPA instance: no field {missing[0]!r} (expected "
                            f"{', '.join(SPA_FIELDS)})", path=path, line=line)
        options, aware, unaware = row["options"], row["aware"], row["unaware"]
        if not (isinstance(options, list) and len(options) >= 2
                and isinstance(aware, list) and isinstance(unaware, list)
                and len(aware) == len(unaware) == len(options)
                and all(isinstance(x, (int, float)) for x in aware + unaware)):
            raise DataError("options, aware and unaware must be lists of one entry per option "
                            "(aware and unaware: the answer distributions)", path=path,
                            line=line)
        instances.append(row)
    return spa_pairs(instances, language)


def spa_pairs(instances: Sequence[Mapping], language: str = "en") -> list[dict]:
    """CultureSPA's culture-related instances as pairs: the prompt names the culture (the joint
    model's prompt), the culture-aware answer is chosen over the culture-unaware one. An
    instance related only by the distance of its distributions (both pick the same option)
    prefers nothing and is left out."""
    pairs = []
    for inst in instances:
        aware, unaware = _argmax(inst["aware"]), _argmax(inst["unaware"])
        if aware == unaware:
            continue
        labels = prompts.survey_option_labels(len(inst["options"]))
        prompt = (prompts.culture_preamble(inst["culture"], language)
                  + prompts.survey_prompt(inst["question"], inst["options"], language))
        pairs.append({"prompt": prompt, "chosen": labels[aware], "rejected": labels[unaware]})
    return pairs


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)
