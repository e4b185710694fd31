"""CALM training data: the held-out split, the per-culture sampler (every micro batch holds
``calm.train.per_culture`` rows of every culture), each rank's share of the batches, and the
tokenisation and collation of rows into CalmModel inputs (:class:`CalmRows`). Used by the worker
loop in :mod:`culture_rl.train.calm` (which re-exports these names)."""

from __future__ import annotations

import random

from culture_rl.models.chat import answer_text, chat_prompt, statement_ids

IGNORE = -100


def split_statements(statements: list[dict], fraction: float, seed: int
                     ) -> tuple[list[dict], list[dict]]:
    """(train, held out): a seeded ``fraction`` of every (culture, label) group is held out
    (at least one of a group of two or more), both in the input order."""
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(statements):
        groups.setdefault((s.get("culture"), s["label"]), []).append(i)
    rng = random.Random(seed)
    held: set[int] = set()
    for key in sorted(groups, key=str):
        members = list(groups[key])
        rng.shuffle(members)
        count = round(fraction * len(members))
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        held.update(members[:count])
    train = [s for i, s in enumerate(statements) if i not in held]
    heldout = [s for i, s in enumerate(statements) if i in held]
    return train, heldout


def per_culture_batches(culture_ids: list[int], per_culture: int, seed: int, epoch: int
                        ) -> list[list[int]]:
    """One epoch of micro batches (row indices): each holds ``per_culture`` rows of every
    culture present, the rows of each culture in a seeded order that depends only on (seed,
    epoch). The epoch ends when the smallest culture runs out (its remainder is dropped; other
    cultures' unused rows come up in later epochs' orders)."""
    by_culture: dict[int, list[int]] = {}
    for i, c in enumerate(culture_ids):
        by_culture.setdefault(int(c), []).append(i)
    if not by_culture:
        return []
    rng = random.Random(seed * 1_000_003 + epoch)
    orders = {}
    for c in sorted(by_culture):
        rows = list(by_culture[c])
        rng.shuffle(rows)
        orders[c] = rows
    count = min(len(rows) for rows in orders.values()) // per_culture
    batches = []
    for b in range(count):
        batch = []
        for c in sorted(orders):
            batch.extend(orders[c][b * per_culture:(b + 1) * per_culture])
        batches.append(batch)
    return batches


def rank_batches(batches: list, rank: int, world_size: int) -> list:
    """This rank's strided share; every rank gets the same number (the remainder is dropped,
    or ZeRO's collectives would wait for a rank with less work)."""
    usable = len(batches) // world_size * world_size
    return batches[:usable][rank::world_size]


def steps_per_epoch(num_rows_per_culture: list[int], per_culture: int, world_size: int,
                    accumulation: int) -> int:
    batches = min(num_rows_per_culture) // per_culture if num_rows_per_culture else 0
    return (batches // world_size) // accumulation


class CalmRows:
    """Tokenised rows and their collation into CalmModel inputs."""

    def __init__(self, tokenizer, rows: list[dict], max_len: int, lm: bool):
        self.pad = tokenizer.pad_token_id
        self.lm = lm
        self.items = []
        for row in rows:
            if "prompt" in row:  # a chat model reads it through its template
                prompt = tokenizer(chat_prompt(tokenizer, row["prompt"]),
                                   add_special_tokens=False)["input_ids"]
                completion = tokenizer(answer_text(tokenizer, row["completion"]),
                                       add_special_tokens=False)["input_ids"]
                ids = (prompt + completion + [tokenizer.eos_token_id])[:max_len]
                labels = ([IGNORE] * len(prompt) + completion + [tokenizer.eos_token_id])[:max_len]
                own = [True] * len(ids)
            else:  # a statement; a chat model reads it as the user's turn
                ids, own = statement_ids(tokenizer, row["text"])
                ids, own = ids[:max_len], own[:max_len]
                labels = [t if mine else IGNORE for t, mine in zip(ids, own)]
            self.items.append((ids, labels, row.get("label_id", IGNORE), row["culture_id"], own))
        # Only a template leaves tokens that are not the row's own; without one the batches
        # carry no identity mask (the model reads every token, as before).
        self.read_own = any(not all(item[4]) for item in self.items)

    def batch(self, indices: list[int]) -> dict:
        import torch

        items = [self.items[i] for i in indices]
        width = max(len(ids) for ids, *_ in items)
        input_ids = torch.full((len(items), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
        own = torch.zeros((len(items), width), dtype=torch.long)
        for i, (ids, lab, _, _, mine) in enumerate(items):
            input_ids[i, :len(ids)] = torch.tensor(ids)
            mask[i, :len(ids)] = 1
            labels[i, :len(lab)] = torch.tensor(lab)
            own[i, :len(mine)] = torch.tensor(mine, dtype=torch.long)
        out = {"input_ids": input_ids, "attention_mask": mask,
               "class_labels": torch.tensor([it[2] for it in items]),
               "culture_ids": torch.tensor([it[3] for it in items])}
        if self.read_own:  # the identity state is read from the statements' own tokens
            out["identity_mask"] = own
        if self.lm:
            out["labels"] = labels
        return out
