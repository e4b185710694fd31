"""CALM's building blocks, each an ``nn.Module`` that knows nothing of the wrapped LM: the
Disentangler (task | explicit | latent heads), CulturePrototypes, CulturalCrossAttention,
CultureMoE, IdentityFusion and PrefixEncoder (and the dataclasses they return).

:class:`culture_rl.models.calm.CalmModel` builds them from the ``calm`` config section and wires
them around the base model; ``culture_rl.models.calm`` re-exports them. The design choices
behind each are in that module's docstring.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from culture_rl.models.calm_losses import load_balancing_loss, pool_tokens, top_k_gating


def _mlp(in_dim: int, out_dim: int, hidden: int, dropout: float = 0.0) -> nn.Module:
    if hidden <= 0:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, out_dim))


@dataclass
class DisentangledFeatures:
    """Pooled [B, D] and per-token [B, T, D] parts; ``task`` is None without disentanglement
    (then ``explicit`` and ``latent`` are the same shared projection)."""

    task: torch.Tensor | None
    explicit: torch.Tensor
    latent: torch.Tensor
    task_tokens: torch.Tensor | None
    explicit_tokens: torch.Tensor
    latent_tokens: torch.Tensor
    culture_logits: torch.Tensor | None = None
    concept_logits: torch.Tensor | None = None


class Disentangler(nn.Module):
    """Three projection heads over the base model's hidden states: task semantics, explicit
    cultural concepts (with a linear culture classifier, and a concept classifier when there
    are concepts) and latent cultural signals (unsupervised). ``separate=False``: one shared
    head for both cultural parts, no task head, no classifiers (the ablation)."""

    def __init__(self, hidden_size: int, dim: int, num_cultures: int, num_concepts: int = 0, *,
                 separate: bool = True, head_hidden_size: int = 256, input_norm: bool = True,
                 pooling: str = "mean", dropout: float = 0.0) -> None:
        super().__init__()
        self.separate, self.pooling = separate, pooling
        self.norm = nn.LayerNorm(hidden_size) if input_norm else nn.Identity()
        if separate:
            self.task = _mlp(hidden_size, dim, head_hidden_size, dropout)
            self.explicit = _mlp(hidden_size, dim, head_hidden_size, dropout)
            self.latent = _mlp(hidden_size, dim, head_hidden_size, dropout)
            self.culture_classifier = nn.Linear(dim, num_cultures)
            self.concept_classifier = nn.Linear(dim, num_concepts) if num_concepts > 0 else None
        else:
            self.shared = _mlp(hidden_size, dim, head_hidden_size, dropout)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> DisentangledFeatures:
        hidden = self.norm(hidden)
        if not self.separate:
            tokens = self.shared(hidden)
            pooled = pool_tokens(tokens, mask, self.pooling)
            return DisentangledFeatures(None, pooled, pooled, None, tokens, tokens)
        task_t, explicit_t, latent_t = self.task(hidden), self.explicit(hidden), self.latent(hidden)
        explicit = pool_tokens(explicit_t, mask, self.pooling)
        concept_logits = (self.concept_classifier(explicit)
                          if self.concept_classifier is not None else None)
        return DisentangledFeatures(
            task=pool_tokens(task_t, mask, self.pooling), explicit=explicit,
            latent=pool_tokens(latent_t, mask, self.pooling), task_tokens=task_t,
            explicit_tokens=explicit_t, latent_tokens=latent_t,
            culture_logits=self.culture_classifier(explicit), concept_logits=concept_logits)


class CulturePrototypes(nn.Module):
    """Learnable prototypes, one per culture (and one per concept), that define the cultural
    clusters. ``forward()`` returns them as unit vectors ([C, D], [K, D] or None); the
    parameters are read only there, so ZeRO-3 gathers them like any module's."""

    def __init__(self, num_cultures: int, dim: int, num_concepts: int = 0) -> None:
        super().__init__()
        self.cultures = nn.Parameter(self._init(num_cultures, dim))
        self.concepts = nn.Parameter(self._init(num_concepts, dim)) if num_concepts > 0 else None

    @staticmethod
    def _init(count: int, dim: int) -> torch.Tensor:
        weight = torch.empty(count, dim)
        if count <= dim:
            nn.init.orthogonal_(weight)
        else:
            nn.init.normal_(weight)
        return weight

    def forward(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        concepts = F.normalize(self.concepts, dim=-1) if self.concepts is not None else None
        return F.normalize(self.cultures, dim=-1), concepts


class CulturalCrossAttention(nn.Module):
    """Explicit-concept features (one query per sample) attend over the cluster prototypes
    (shared by the batch) and the latent signals (per token, pads masked) as keys/values;
    pre-norm, residual: ``aligned = explicit + MHA(LN(explicit), LN(kv), LN(kv))``."""

    def __init__(self, dim: int, num_heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_query = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)

    def forward(self, query: torch.Tensor, prototypes: torch.Tensor | None = None,
                latent: torch.Tensor | None = None, latent_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``query`` [B, D]; ``prototypes`` [P, D]; ``latent`` [B, L, D] with ``latent_mask``
        [B, L] (true = real token). Returns the aligned features [B, D] and the attention
        weights [B, P + L] (heads averaged)."""
        batch = query.shape[0]
        keys, ignore = [], []
        if prototypes is not None:
            keys.append(prototypes.unsqueeze(0).expand(batch, -1, -1))
            ignore.append(torch.zeros(batch, prototypes.shape[0], dtype=torch.bool,
                                      device=query.device))
        if latent is not None:
            if latent_mask is None:
                latent_mask = torch.ones(latent.shape[:2], dtype=torch.bool, device=query.device)
            latent_ignore = ~latent_mask.bool()
            if prototypes is None:  # a row with every key masked would give NaN
                latent_ignore[latent_ignore.all(1), 0] = False
            keys.append(latent)
            ignore.append(latent_ignore)
        if not keys:
            raise ValueError("cross-attention needs prototypes or latent signals as keys")
        kv = self.norm_kv(torch.cat(keys, dim=1).to(query.dtype))
        out, weights = self.attention(self.norm_query(query).unsqueeze(1), kv, kv,
                                      key_padding_mask=torch.cat(ignore, dim=1),
                                      need_weights=True)
        return query + out.squeeze(1), weights.squeeze(1)


@dataclass
class MoEOutput:
    output: torch.Tensor            # [B, out]
    gate_weights: torch.Tensor      # [B, E], k non-zeros per row, rows sum to 1
    router_probs: torch.Tensor      # [B, E], softmax over all experts
    load_balance: torch.Tensor      # scalar


class CultureMoE(nn.Module):
    """E experts (one per cultural dimension) with top-k gating and Switch load balancing.
    Experts are evaluated densely and weighted by the gate (E is small)."""

    def __init__(self, in_dim: int, out_dim: int, num_experts: int = 4, top_k: int = 2,
                 hidden_size: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k {top_k} must be in 1..num_experts {num_experts}")
        self.top_k = top_k
        self.router = nn.Linear(in_dim, num_experts)
        self.experts = nn.ModuleList(_mlp(in_dim, out_dim, hidden_size, dropout)
                                     for _ in range(num_experts))

    def forward(self, x: torch.Tensor) -> MoEOutput:
        logits = self.router(x)
        weights, dispatch = top_k_gating(logits, self.top_k)
        probs = torch.softmax(logits.float(), dim=-1)
        outputs = torch.stack([expert(x) for expert in self.experts], dim=1)
        mixed = (weights.unsqueeze(-1).to(outputs.dtype) * outputs).sum(1)
        return MoEOutput(mixed, weights, probs, load_balancing_loss(probs, dispatch))


class IdentityFusion(nn.Module):
    """Gated fusion ``h' = h + g * W(z)``, ``g = sigmoid(gate([h, z]))``, of the MoE output z
    [B, D] with hidden states h [B, H] or [B, T, H] (z broadcast over positions). Returns
    ``(h', g, g * W(z))``; with g = 0 (gate bias -inf) h' is h exactly, in h's dtype."""

    def __init__(self, hidden_size: int, dim: int, gate: str = "scalar",
                 gate_bias_init: float = -2.0) -> None:
        super().__init__()
        if gate not in ("scalar", "channel"):
            raise ValueError(f"unknown gate {gate!r} (scalar, channel)")
        self.proj = nn.Linear(dim, hidden_size)
        self.gate = nn.Linear(hidden_size + dim, 1 if gate == "scalar" else hidden_size)
        nn.init.constant_(self.gate.bias, gate_bias_init)

    def forward(self, hidden: torch.Tensor, z: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        while z.dim() < hidden.dim():
            z = z.unsqueeze(-2)
        h = hidden.to(z.dtype)
        z = z.expand(*h.shape[:-1], z.shape[-1])
        g = torch.sigmoid(self.gate(torch.cat([h, z], dim=-1)))
        delta = g * self.proj(z)
        return hidden + delta.to(hidden.dtype), g, delta


class PrefixEncoder(nn.Module):
    """``k`` soft prefix tokens [B, k, H] from the gated identity contribution [B, H]
    (bias-free: a null contribution gives null tokens)."""

    def __init__(self, hidden_size: int, num_tokens: int) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.proj = nn.Linear(hidden_size, num_tokens * hidden_size, bias=False)

    def forward(self, identity: torch.Tensor) -> torch.Tensor:
        return self.proj(identity).view(identity.shape[0], self.num_tokens, -1)


__all__ = [
    "CultureMoE", "CulturalCrossAttention", "CulturePrototypes", "DisentangledFeatures",
    "Disentangler", "IdentityFusion", "MoEOutput", "PrefixEncoder",
]
