"""CALM's identity state: the modules of :class:`~culture_rl.models.calm.CalmModel` applied to
the hidden states of the reading pass, from disentangling to the fused identity, with their
loss terms. The wrapper (which passes, where the identity is injected) is
:mod:`culture_rl.models.calm`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from culture_rl.config.calm import CalmConfig
from culture_rl.models.calm_losses import (masked_cross_entropy, orthogonality_loss, pool_tokens,
                                           prototype_loss, supervised_contrastive_loss)


@dataclass
class IdentityParts:
    """What the CALM modules read from one batch: the injection inputs, the heads' outputs and
    the loss terms."""

    z: torch.Tensor | None                       # MoE output [B, D]
    prefix_delta: torch.Tensor | None            # g * W(z) on the pooled state [B, H]
    prefix_active: torch.Tensor | None           # [B] bool: gate not exactly closed
    class_logits: torch.Tensor | None
    gate_weights: torch.Tensor | None
    identity: torch.Tensor | None
    losses: dict[str, torch.Tensor]
    features: dict[str, torch.Tensor]


def read_identity(calm: nn.ModuleDict, c: CalmConfig, h: torch.Tensor, mask: torch.Tensor,
                  culture_ids, concept_ids, class_labels) -> IdentityParts:
    """CALM's modules on the hidden states ``h`` [B, T, H] (in the modules' dtype) of the
    tokens in ``mask``: disentangle, prototypes, cross-attention, MoE, fusion and the
    classification head, with every loss term whose labels are given (ids of -100 ignored)."""
    losses: dict[str, torch.Tensor] = {}
    feats = calm["disentangler"](h, mask)
    features = {"explicit": feats.explicit, "latent": feats.latent}
    if feats.task is not None:
        features["task"] = feats.task
        orth = (orthogonality_loss(feats.task, feats.explicit)
                + orthogonality_loss(feats.task, feats.latent))
        if c.disentangle.orthogonal_cultural_parts:
            orth = orth + orthogonality_loss(feats.explicit, feats.latent)
        losses["orthogonality"] = orth
        if culture_ids is not None:
            culture = masked_cross_entropy(feats.culture_logits, culture_ids)
            if concept_ids is not None and feats.concept_logits is not None:
                culture = culture + masked_cross_entropy(feats.concept_logits, concept_ids)
            losses["culture"] = culture

    culture_protos = concept_protos = None
    if "prototypes" in calm:
        culture_protos, concept_protos = calm["prototypes"]()
        if culture_ids is not None:
            proto = prototype_loss(feats.explicit, culture_protos, culture_ids,
                                   c.prototypes.temperature)
            if concept_ids is not None and concept_protos is not None:
                proto = proto + prototype_loss(feats.explicit, concept_protos, concept_ids,
                                               c.prototypes.temperature)
            losses["prototype"] = proto
    if c.contrastive.enabled and culture_ids is not None:
        losses["contrastive"] = supervised_contrastive_loss(
            feats.explicit, culture_ids, c.contrastive.temperature)

    aligned = feats.explicit
    if "cross_attention" in calm:
        protos = None
        if culture_protos is not None:
            protos = (culture_protos if concept_protos is None
                      else torch.cat([culture_protos, concept_protos]))
        if c.cross_attention.latent_tokens:
            latent, latent_mask = feats.latent_tokens, mask.bool()
        else:
            latent, latent_mask = feats.latent.unsqueeze(1), None
        aligned, attention = calm["cross_attention"](aligned, protos, latent, latent_mask)
        features["attention"] = attention
    features["aligned"] = aligned

    moe_in = torch.cat([aligned, feats.latent], dim=-1)
    gate_weights = None
    if c.moe.enabled:
        moe = calm["moe"](moe_in)
        z, gate_weights = moe.output, moe.gate_weights
        losses["load_balance"] = moe.load_balance
    else:
        z = calm["moe"](moe_in)
    features["moe"] = z

    pooled_h = pool_tokens(h, mask, c.pooling)
    identity = prefix_delta = prefix_active = None
    if "fusion" in calm:
        identity, gate, prefix_delta = calm["fusion"](pooled_h, z)
        prefix_active = (gate > 0).any(-1)
        features["fusion_gate"] = gate

    class_logits = None
    if "classifier" in calm:
        head_in = identity if identity is not None else pooled_h
        if feats.task is not None:
            head_in = torch.cat([head_in, feats.task], dim=-1)
        class_logits = calm["classifier"](head_in)
        if class_labels is not None:
            losses["classification"] = masked_cross_entropy(class_logits, class_labels)
    return IdentityParts(z, prefix_delta, prefix_active, class_logits, gate_weights, identity,
                     losses, features)
