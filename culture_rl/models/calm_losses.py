"""CALM's pure tensor functions: the losses (supervised contrastive, prototype, orthogonality,
masked cross-entropy, Switch load balancing) and the small helpers around them (token pooling,
top-k gating, the attention mask and labels of a soft prefix, the routing table per culture).

No parameters and no state; the modules (:mod:`culture_rl.models.calm_modules`) and the wrapper
(:mod:`culture_rl.models.calm`) call them, and ``culture_rl.models.calm`` re-exports them. The
design choices behind each are in that module's docstring.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def pool_tokens(x: torch.Tensor, mask: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """Sequence-level features from per-token ``x`` [B, T, D] over the non-pad tokens of
    ``mask`` [B, T]: their mean (``how='mean'``) or the last one (``'last'``)."""
    if how == "mean":
        weights = mask.to(x.dtype).unsqueeze(-1)
        return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    if how == "last":
        positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
        last = (mask.long() * positions).argmax(1)
        return x[torch.arange(x.shape[0], device=x.device), last]
    raise ValueError(f"unknown pooling {how!r} (mean, last)")


def supervised_contrastive_loss(features: torch.Tensor, labels: torch.Tensor,
                                temperature: float = 0.1,
                                ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    r"""Supervised contrastive loss (Khosla et al. 2020, :math:`L^{sup}_{out}`).

    With :math:`z_i = f_i / \lVert f_i \rVert`, :math:`P(i) = \{p \ne i : y_p = y_i\}` and the
    anchors :math:`A = \{i : |P(i)| > 0\}`:

    .. math::

        L = \frac{1}{|A|} \sum_{i \in A} \frac{-1}{|P(i)|} \sum_{p \in P(i)}
            \log \frac{\exp(z_i \cdot z_p / \tau)}{\sum_{a \ne i} \exp(z_i \cdot z_a / \tau)}

    Samples labelled ``ignore_index`` take no part at all; a sample with no positive is no anchor
    but still a negative of the others. No anchor at all gives 0 (attached to the graph).
    ``features`` [N, D], ``labels`` [N].
    """
    keep = labels != ignore_index
    z = F.normalize(features[keep].float(), dim=-1)
    y = labels[keep]
    n = z.shape[0]
    zero = features.sum() * 0.0
    if n < 2:
        return zero
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    positives = (y[:, None] == y[None, :]) & ~eye
    counts = positives.sum(1)
    anchors = counts > 0
    if not anchors.any():
        return zero
    per_anchor = log_prob.masked_fill(~positives, 0.0).sum(1)[anchors] / counts[anchors]
    return -per_anchor.mean().to(features.dtype)


def orthogonality_loss(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Mean squared entry of the cross-correlation matrix of ``a`` [N, Da] and ``b`` [N, Db]
    over the batch: ``||C||_F^2 / (Da * Db)`` with ``C = a_std^T b_std / N`` and every column
    standardised (zero mean, unit variance). 0 when no feature of ``a`` correlates linearly
    with any feature of ``b``, in [0, 1] and invariant to the features' scale. Fewer than two
    samples give 0."""
    if a.shape[0] < 2:
        return (a.sum() + b.sum()) * 0.0

    def standardise(x: torch.Tensor) -> torch.Tensor:
        x = x.float() - x.float().mean(0, keepdim=True)
        return x / torch.sqrt(x.pow(2).mean(0, keepdim=True) + eps)

    cross = standardise(a).T @ standardise(b) / a.shape[0]
    return cross.pow(2).mean().to(a.dtype)


def prototype_loss(features: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor,
                   temperature: float = 0.1) -> torch.Tensor:
    """Cross-entropy of the cosine similarities (over ``temperature``) of ``features`` [N, D] to
    every prototype [K, D] against each sample's own prototype index ``labels`` [N]."""
    logits = F.normalize(features, dim=-1) @ F.normalize(prototypes, dim=-1).T / temperature
    return masked_cross_entropy(logits, labels)


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy ignoring labels of -100; 0 (attached to the graph) when all are ignored,
    where ``F.cross_entropy`` would give NaN."""
    if not (labels != IGNORE_INDEX).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX).to(logits.dtype)


def top_k_gating(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gate weights [N, E]: softmax over each row's top-k logits, zeros elsewhere (rows sum to
    1, exactly k non-zeros); and the bool dispatch mask of the chosen experts."""
    top_values, top_index = logits.topk(k, dim=-1)
    weights = torch.zeros_like(logits).scatter(-1, top_index, torch.softmax(top_values, dim=-1))
    dispatch = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, top_index, True)
    return weights, dispatch


def load_balancing_loss(router_probs: torch.Tensor, dispatch: torch.Tensor) -> torch.Tensor:
    """Switch Transformer load balancing ``E * sum_e f_e * P_e``: ``f_e`` the share of all
    assignments in ``dispatch`` [N, E] that go to expert e, ``P_e`` the mean router probability
    (softmax over all E logits) ``router_probs`` [N, E]. 1 when routing is uniform, E when
    everything goes to one expert with probability 1."""
    num_experts = router_probs.shape[-1]
    fraction = dispatch.float().sum(0) / dispatch.float().sum().clamp_min(1.0)
    return num_experts * (fraction * router_probs.float().mean(0)).sum()


def extend_for_prefix(attention_mask: torch.Tensor, labels: torch.Tensor | None,
                      num_prefix: int, active: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention mask and labels for ``num_prefix`` soft tokens prepended to every sequence:
    the mask gets ones in front (zeros for samples whose ``active`` [B] is false), the labels
    -100 (no loss on the prefix)."""
    batch = attention_mask.shape[0]
    if active is None:
        active = torch.ones(batch, dtype=torch.bool, device=attention_mask.device)
    prefix_mask = active.to(attention_mask.dtype)[:, None].expand(batch, num_prefix)
    mask = torch.cat([prefix_mask, attention_mask], dim=1)
    if labels is None:
        return mask, None
    pad = torch.full((batch, num_prefix), IGNORE_INDEX, dtype=labels.dtype, device=labels.device)
    return mask, torch.cat([pad, labels], dim=1)


def routing_by_culture(gate_weights: torch.Tensor, culture_ids: torch.Tensor,
                       num_cultures: int) -> torch.Tensor:
    """Mean gate weight per culture and expert [C, E] (rows of absent cultures are 0): which
    cultural dimensions each culture routes to."""
    table = gate_weights.new_zeros(num_cultures, gate_weights.shape[-1])
    counts = gate_weights.new_zeros(num_cultures)
    keep = culture_ids != IGNORE_INDEX
    table.index_add_(0, culture_ids[keep], gate_weights[keep])
    counts.index_add_(0, culture_ids[keep], torch.ones_like(culture_ids[keep], dtype=counts.dtype))
    return table / counts.clamp_min(1.0)[:, None]


__all__ = [
    "IGNORE_INDEX", "extend_for_prefix", "load_balancing_loss", "masked_cross_entropy",
    "orthogonality_loss", "pool_tokens", "prototype_loss", "routing_by_culture",
    "supervised_contrastive_loss", "top_k_gating",
]
