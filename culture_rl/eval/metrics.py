"""Evaluation metrics: pure functions, no torch, no I/O.

Everything the evaluators, the PPO reward scorers and the reports compute lives here so that it
is unit-tested in isolation (the verl habit: algorithms as small pure functions). See DESIGN.md,
sections "Metrics" and "ALIGN specifics", for where each number comes from.
"""

from __future__ import annotations

import re
import statistics
import unicodedata
import warnings
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.special import rel_entr
from scipy.stats import spearmanr

# Added to every option of the *second* distribution before renormalising in KL: an option the
# reference gives zero mass would otherwise make KL infinite, and one infinite item would swamp
# any average over a survey. 1e-10 caps a single term near p*23 nats, far above real values.
KL_EPSILON = 1e-10

# closer_to: distances closer than this are float noise, not a preference for one culture.
TIE_TOLERANCE = 1e-12

# Answers come as "a, b, c", "a；b", Chinese "猫，狗、鱼" or one word per (numbered) line.
_SEPARATORS = re.compile(r"[,，、;；\n\r]+")
# List markers at the start of a piece: "1.", "1)", "1:", "1：", "1、", "(1)", "- ", "* ", "• ".
# The (?!\d) keeps "3.5" intact: a number followed by a digit is content, not a marker.
_NUMBERING = re.compile(r"^\s*(?:\(?\d+\s*[.)）:：、](?!\d)\s*|[-*•]\s+)")
# ALIGN's answer format: free reasoning, then a "Final Ranking" / "最终排名" section.
_RANKING_HEADING = re.compile(r"final\s*ranking|最终排名", re.IGNORECASE)


# --------------------------------------------------------------------------- word lists


def _strip_punct(s: str) -> str:
    """Strip whitespace, punctuation and quotes (any script) from both ends of ``s``."""
    # Unicode categories rather than string.punctuation so that Chinese “”「」。！ go too;
    # '`' is a modifier symbol (Sk), not punctuation, but models wrap words in it.
    def junk(c: str) -> bool:
        return c.isspace() or c == "`" or unicodedata.category(c).startswith("P")

    start, end = 0, len(s)
    while start < end and junk(s[start]):
        start += 1
    while end > start and junk(s[end - 1]):
        end -= 1
    return s[start:end]


def _clean_piece(piece: str) -> str:
    # Punctuation first so "**1. cat**" loses its markdown before the marker test, then again
    # after, for "1. 'cat'".
    return _strip_punct(_NUMBERING.sub("", _strip_punct(piece))).lower()


def split_answer(text: str) -> list[str]:
    """Parse a model's list answer into distinct, normalised words, in the order given.

    Splits on commas (also ``，`` and ``、``), semicolons and newlines; drops list markers such as
    ``1.``, ``1)``, ``1:``, ``- `` and ``* ``; strips surrounding punctuation and quotes;
    lower-cases; drops empties and repeats (first occurrence wins).
    """
    out: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines():
        # Strip a line's marker before splitting: "1、猫" would otherwise split at 、 into "1", "猫".
        for piece in _SEPARATORS.split(_NUMBERING.sub("", line)):
            word = _clean_piece(piece)
            if word and word not in seen:
                seen.add(word)
                out.append(word)
    return out


def _norm(word: str) -> str:
    return word.strip().lower()


def length_summary(lengths: Sequence[float], limit: int | None = None) -> dict[str, float]:
    """The distribution of answer lengths: median, 90th percentile (nearest rank) and maximum,
    and with ``limit`` (the generation's max_new_tokens, lengths in tokens) the share of answers
    that reached it: those were cut off, not ended, so their parse is of a partial answer."""
    if not lengths:
        return {}
    ordered = sorted(float(x) for x in lengths)
    p90 = ordered[max(0, -(-9 * len(ordered) // 10) - 1)]  # nearest rank: ceil(0.9 n)
    out = {"median": float(statistics.median(ordered)), "p90": p90, "max": ordered[-1]}
    if limit is not None:
        out["at_limit_share"] = sum(x >= limit for x in ordered) / len(ordered)
    return out

def precision_at_k(predicted: list[str] | str, human: Iterable[str], k: int) -> float:
    """Share of the first ``k`` distinct predicted words found among the human associations.

    Always divided by ``k``, even when fewer than ``k`` words were predicted: ALIGN scores it so,
    which keeps a model from gaining precision by answering less.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    words = split_answer(predicted) if isinstance(predicted, str) else [_norm(w) for w in predicted]
    top = list(dict.fromkeys(w for w in words if w))[:k]  # dict keeps first-occurrence order
    gold = {_norm(h) for h in human}
    return sum(w in gold for w in top) / k


# --------------------------------------------------------------------------- distributions


def _as_dist(x: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D list of numbers, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values: {a.tolist()}")
    if np.any(a < 0):
        raise ValueError(f"{name} contains negative values: {a.tolist()}")
    total = a.sum()
    if total <= 0:
        raise ValueError(f"{name} has no mass (all zeros)")
    return a / total  # survey shares often sum to 0.98 or 100; compare shapes, not scales


def _pair(p: Sequence[float], q: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    pa, qa = _as_dist(p, "p"), _as_dist(q, "q")
    if pa.size != qa.size:
        raise ValueError(f"distributions differ in length: p has {pa.size} options, q {qa.size}")
    return pa, qa


def js_distance(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen-Shannon distance with base-2 logs, in [0, 1]; equals scipy's ``jensenshannon``."""
    pa, qa = _pair(p, q)
    m = (pa + qa) / 2
    # rel_entr defines 0*log(0/x) = 0, so zero-mass options are fine; m > 0 wherever p or q is.
    js = (rel_entr(pa, m).sum() + rel_entr(qa, m).sum()) / (2 * np.log(2))
    return float(np.sqrt(np.clip(js, 0.0, 1.0)))  # clip: rounding can give -1e-17


def emd_normalized(p: Sequence[float], q: Sequence[float]) -> float:
    """Earth mover's distance over option positions 1..n divided by n-1, in [0, 1].

    Options are ordered (e.g. "agree strongly" .. "disagree strongly"), so mass moved further
    costs more; dividing by the largest possible distance makes questions of any length
    comparable. A single option has nothing to move: 0.0.
    """
    pa, qa = _pair(p, q)
    n = pa.size
    if n == 1:
        return 0.0
    # 1-D EMD with unit spacing = area between the CDFs; the last CDF difference is always 0.
    emd = np.abs(np.cumsum(pa) - np.cumsum(qa))[:-1].sum()
    return float(np.clip(emd / (n - 1), 0.0, 1.0))


def kl_divergence(p: Sequence[float], q: Sequence[float]) -> float:
    """KL(p || q) in nats; ``q`` is smoothed by ``KL_EPSILON`` (then renormalised) to stay finite."""
    pa, qa = _pair(p, q)
    qs = (qa + KL_EPSILON) / (1 + KL_EPSILON * qa.size)
    return float(max(rel_entr(pa, qs).sum(), 0.0))


def cosine_similarity(p: Sequence[float], q: Sequence[float]) -> float:
    """Cosine of the angle between the two distributions (in [0, 1] for non-negative inputs)."""
    pa, qa = _pair(p, q)
    return float(np.clip(pa @ qa / (np.linalg.norm(pa) * np.linalg.norm(qa)), -1.0, 1.0))


def argmax_agreement(p: Sequence[float], q: Sequence[float]) -> float:
    """1.0 when both put most mass on the same option, else 0.0 (ties: the first option wins)."""
    pa, qa = _pair(p, q)
    return 1.0 if int(np.argmax(pa)) == int(np.argmax(qa)) else 0.0


def distribution_scores(p: Sequence[float], q: Sequence[float]) -> dict[str, float]:
    """All survey-alignment numbers for one question: js, emd, kl_pq, kl_qp, cosine, argmax_agree."""
    return {
        "js": js_distance(p, q),
        "emd": emd_normalized(p, q),
        "kl_pq": kl_divergence(p, q),
        "kl_qp": kl_divergence(q, p),
        "cosine": cosine_similarity(p, q),
        "argmax_agree": argmax_agreement(p, q),
    }


def tension_score(p: Sequence[float], q: Sequence[float]) -> float:
    """0.5 * JS distance + 0.5 * normalised EMD: disagreement in shape and in ordered position."""
    return 0.5 * js_distance(p, q) + 0.5 * emd_normalized(p, q)


def _distributions(question: Any) -> Mapping[str, Sequence[float]]:
    # Loaders yield dataclasses, JSONL readers plain dicts; accept both.
    if isinstance(question, Mapping):
        return question.get("distributions") or {}
    return getattr(question, "distributions", None) or {}


def high_tension_items(questions: Iterable[Any], culture_a: str, culture_b: str, n: int) -> list:
    """The ``n`` questions on which ``culture_a`` and ``culture_b`` disagree most, highest first.

    Questions lacking either culture are skipped; equal scores keep their input order.
    """
    scored = []
    for q in questions:
        dists = _distributions(q)
        if culture_a in dists and culture_b in dists:
            scored.append((tension_score(dists[culture_a], dists[culture_b]), q))
    scored.sort(key=lambda item: -item[0])  # list.sort is stable: ties stay in input order
    return [q for _, q in scored[: max(n, 0)]]


def closer_to(
    model_dist: Sequence[float], dist_a: Sequence[float], dist_b: Sequence[float]
) -> str:
    """Which culture the model's distribution is nearer by tension score: "a", "b" or "tie".

    Scores within ``TIE_TOLERANCE`` count as equal: mirror-image distributions are exactly as far
    from each side, but summing their CDFs in a different order differs in the last bits.
    """
    to_a, to_b = tension_score(model_dist, dist_a), tension_score(model_dist, dist_b)
    if abs(to_a - to_b) <= TIE_TOLERANCE:
        return "tie"
    return "a" if to_a < to_b else "b"


# --------------------------------------------------------------------------- ALIGN ranking


def parse_ranking(answer_text: str, words: list[str]) -> list[str] | None:
    """The model's order of the given ``words``, or None when it names none of them.

    Only the part after the last "Final Ranking" / "最终排名" heading is read when one exists:
    the reasoning before it mentions the words in arbitrary order. Accepts ``N: word`` /
    ``N. word`` / ``N) word`` lines or a comma-separated list; words outside ``words`` are dropped.
    """
    headings = list(_RANKING_HEADING.finditer(answer_text))
    section = answer_text[headings[-1].end():] if headings else answer_text
    # Match on the normalised word and on its punctuation-stripped form, as split_answer cleans.
    lookup: dict[str, str] = {}
    for w in words:
        lookup.setdefault(_clean_piece(w), _norm(w))
        lookup[_norm(w)] = _norm(w)
    order = [lookup[p] for p in split_answer(section) if p in lookup]
    order = list(dict.fromkeys(order))  # "cat" and "'cat'" may map to the same word
    return order or None


def spearman_ranking_reward(answer_text: str, human_order: list[str]) -> float:
    """ALIGN's PPO reward: Spearman rho between the human frequency order and the model's order.

    Words the model leaves out take the worst rank n+1; an unparseable answer or an undefined
    rho (e.g. every word missing, so the model's ranks are constant) gives -1.0, the worst reward,
    so the policy is never paid for dodging the format.
    """
    human = list(dict.fromkeys(_norm(w) for w in human_order))
    ranking = parse_ranking(answer_text, human)
    if ranking is None or len(human) < 2:
        return -1.0
    n = len(human)
    position = {w: i + 1 for i, w in enumerate(ranking)}
    model_ranks = [position.get(w, n + 1) for w in human]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on constant input; we map that to -1
        rho = spearmanr(np.arange(1, n + 1), model_ranks).statistic
    if rho is None or not np.isfinite(rho):
        return -1.0
    return float(np.clip(rho, -1.0, 1.0))


# --------------------------------------------------------------------------- classification


def _check_labels(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> None:
    if len(y_true) == 0:
        raise ValueError("y_true and y_pred are empty")
    if len(y_true) != len(y_pred):
        raise ValueError(f"length mismatch: {len(y_true)} true labels, {len(y_pred)} predicted")


def accuracy(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> float:
    """Share of positions where the prediction equals the true label."""
    _check_labels(y_true, y_pred)
    return sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true)


def macro_f1(
    y_true: Sequence[Hashable],
    y_pred: Sequence[Hashable],
    labels: Iterable[Hashable] | None = None,
) -> float:
    """Unweighted mean of per-class F1 (sklearn's ``average="macro", zero_division=0``).

    Classes default to the union of labels in ``y_true`` and ``y_pred``: a class the model
    invents but never is true still counts, with F1 0, as sklearn does.
    """
    _check_labels(y_true, y_pred)
    classes = list(dict.fromkeys(labels if labels is not None else [*y_true, *y_pred]))
    if not classes:
        raise ValueError("labels is empty")
    scores = []
    for c in classes:
        tp = sum(t == c and p == c for t, p in zip(y_true, y_pred))
        fp = sum(t != c and p == c for t, p in zip(y_true, y_pred))
        fn = sum(t == c and p != c for t, p in zip(y_true, y_pred))
        # 2tp/(2tp+fp+fn) equals 2PR/(P+R) and is defined whenever the class occurs at all.
        denom = 2 * tp + fp + fn
        scores.append(2 * tp / denom if denom else 0.0)
    return float(sum(scores) / len(scores))


# --------------------------------------------------------------------------- lexical norms


def lexical_norms(
    words: Iterable[str],
    lexicon: Mapping[str, Mapping[str, float]],
    keys: Sequence[str] = ("valence", "arousal", "dominance", "concreteness"),
) -> dict[str, float | int | None]:
    """Median rating per key over the words the lexicon rates, plus coverage and word count.

    Medians, not means, because ALIGN reports them and a few extreme words would pull a mean.
    A key no word has (e.g. concreteness in a Warriner-only lexicon) gives None, not 0.
    """
    normed = [w for w in (_norm(w) for w in words) if w]
    entries = [lexicon.get(w) for w in normed]
    result: dict[str, float | int | None] = {}
    for key in keys:
        vals = [
            float(e[key])
            for e in entries
            if e is not None and e.get(key) is not None and np.isfinite(float(e[key]))
        ]
        result[f"median_{key}"] = float(statistics.median(vals)) if vals else None
    found = sum(e is not None for e in entries)
    result["coverage"] = found / len(normed) if normed else 0.0
    result["n_words"] = len(normed)
    return result


def concrete_share(words: Iterable[str], lexicon: Mapping[str, Mapping[str, float]],
                   threshold: float = 3.0) -> float | None:
    """Share of the concreteness-rated ``words`` rated at least ``threshold`` (Brysbaert 1-5;
    3 is the scale's midpoint). None when no word has a concreteness rating."""
    rated = [float(e["concreteness"]) for e in (lexicon.get(_norm(w)) for w in words)
             if e is not None and e.get("concreteness") is not None]
    return sum(v >= threshold for v in rated) / len(rated) if rated else None


def wilcoxon_paired(x: Sequence[float], y: Sequence[float]) -> dict[str, float | int | None]:
    """Paired two-sided Wilcoxon signed-rank test of ``x`` against ``y`` (scipy).

    Returns the median of the differences x - y, the p-value and the number of pairs. Pairs
    whose difference is zero carry no sign and are dropped (scipy's default, Wilcoxon's
    original rule); when every difference is zero the samples are identical: p = 1. With no
    pairs the p-value is None.
    """
    from scipy.stats import wilcoxon

    if len(x) != len(y):
        raise ValueError(f"length mismatch: {len(x)} vs {len(y)} paired values")
    diffs = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    if diffs.size == 0:
        return {"median_difference": None, "p_value": None, "n": 0}
    median = float(np.median(diffs))
    if np.allclose(diffs, 0.0):
        return {"median_difference": median, "p_value": 1.0, "n": int(diffs.size)}
    p_value = float(wilcoxon(diffs).pvalue)
    return {"median_difference": median, "p_value": p_value, "n": int(diffs.size)}
