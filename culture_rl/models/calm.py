"""CALM (Culturally Self-Aware Language Models, arXiv 2601.03483): the modules around any causal LM.

CALM has no public code; its abstract is the specification. :class:`CalmModel` wraps any Hugging
Face causal LM (frozen, LoRA via peft, or fully trainable) and adds small modules, each switched
off by one config flag (``culture_rl.config.calm.CalmConfig``)::

    base hidden states (layer calm.feature_layer)
      -> Disentangler            task semantics | explicit cultural concepts | latent signals
                                 (orthogonality loss; explicit part -> culture/concept classifier)
      -> CulturePrototypes       learnable culture (and concept) prototypes, prototype loss;
         supervised_contrastive_loss over the explicit representations
      -> CulturalCrossAttention  explicit (query) attends over prototypes + latent tokens
      -> CultureMoE              top-k gated experts, one per cultural dimension; gate weights
      -> IdentityFusion          h' = h + g * W(z), g = sigmoid(gate(h, z))  -> identity state
      -> injected into the LM    'hook' (decoder layer output) or 'prefix' (soft prefix tokens)
      -> heads                   LM loss of the wrapped model; classification on the identity

Total loss = lm + classification + lambda_contrastive * (contrastive + prototype)
             + lambda_orth * orthogonality + lambda_balance * load_balance
             + lambda_culture * culture.

The design choices where the abstract is silent (two passes, per token and pooled features,
orthogonality as batch decorrelation, who is supervised, the contrastive loss, prototypes,
cross-attention, MoE, the fusion gate, injection, the identity state, ablations, precision) are
written out in docs/calm.md, "Design choices".

Layout: this module is the wrapper (:class:`CalmModel`: the passes and the injection, and
``build_calm_model``); the modules' computation of the identity state is
:mod:`culture_rl.models.calm_identity`, the CALM-only parameter/state helpers
:mod:`culture_rl.models.calm_state`, the pure losses :mod:`culture_rl.models.calm_losses`, the
``nn.Module`` blocks :mod:`culture_rl.models.calm_modules`; all are re-exported here.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from culture_rl.config.calm import CalmConfig
from culture_rl.models.calm_losses import (IGNORE_INDEX, extend_for_prefix, load_balancing_loss,
                                           masked_cross_entropy, orthogonality_loss, pool_tokens,
                                           prototype_loss, routing_by_culture,
                                           supervised_contrastive_loss, top_k_gating)
from culture_rl.models.calm_identity import IdentityParts, read_identity
from culture_rl.models.calm_state import calm_parameters, calm_state_dict, load_calm_state
from culture_rl.models.calm_modules import (CulturalCrossAttention, CultureMoE, CulturePrototypes,
                                            DisentangledFeatures, Disentangler, IdentityFusion,
                                            MoEOutput, PrefixEncoder)


@dataclass
class CalmOutput:
    """``loss``: the weighted total (None without any term); ``losses``: each term that is on
    and has its labels (lm, classification, culture, contrastive, prototype, orthogonality,
    load_balance), unweighted; ``logits``: LM logits [B, T, V] of the input positions (with the
    injection); ``class_logits`` [B, num_labels]; ``gate_weights`` [B, E] (MoE routing);
    ``identity`` [B, H] (the pooled identity state); ``features``: intermediate tensors
    (task, explicit, latent, aligned, moe, fusion_gate, attention) for inspection."""

    loss: torch.Tensor | None
    losses: dict[str, torch.Tensor]
    logits: torch.Tensor
    class_logits: torch.Tensor | None = None
    gate_weights: torch.Tensor | None = None
    identity: torch.Tensor | None = None
    features: dict[str, torch.Tensor] = field(default_factory=dict)


def _text_config(config: Any) -> Any:
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids counted over the real tokens of ``mask`` (pads get 0), as Hugging Face
    ``generate`` counts them: a pass over a padded row then gives the same positions however
    much padding the row has (the trainer pads a rollout's prompts to another width than the
    generator did, and a soft prefix sits before the left padding)."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


def _hooks_inside_checkpoint(layer: nn.Module) -> bool:
    """True where Hugging Face checkpoints a layer's ``__call__`` (transformers < 5), so a
    forward hook would be replayed without its state in backward."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # pragma: no cover - very old transformers
        return True
    return isinstance(layer, GradientCheckpointingLayer) and \
        "__call__" in vars(GradientCheckpointingLayer)


class CalmModel(nn.Module):
    """Any Hugging Face causal LM (``self.base``) with the CALM modules (``self.calm``).

    ``forward(input_ids, attention_mask, labels=None, culture_ids=None, concept_ids=None,
    class_labels=None) -> CalmOutput``; ``generate(input_ids, attention_mask, **kwargs)``
    generates with the identity injected and returns prompt + new tokens. Labels of -100 are
    ignored; ``culture_ids``/``concept_ids``/``class_labels`` are one id per sample.
    """

    def __init__(self, base: nn.Module, config: CalmConfig, num_cultures: int, num_labels: int,
                 num_concepts: int = 0) -> None:
        super().__init__()
        if num_cultures < 1:
            raise ValueError(f"num_cultures must be >= 1 (got {num_cultures})")
        if num_labels < 0 or num_concepts < 0:
            raise ValueError("num_labels and num_concepts must be >= 0")
        text = _text_config(base.config)
        hidden, num_layers = int(text.hidden_size), int(text.num_hidden_layers)
        if not -(num_layers + 1) <= config.feature_layer <= num_layers:
            raise ValueError(f"calm.feature_layer {config.feature_layer} is outside the "
                             f"{num_layers + 1} hidden states of the model")
        self.base = base
        self.calm_config = config
        self.num_cultures, self.num_labels = num_cultures, num_labels
        self.num_concepts = num_concepts
        self.hidden_size, self.num_layers = hidden, num_layers
        self.hook_layer: int | None = None
        if config.fusion.enabled and config.injection == "hook":
            layer = (num_layers - 1) // 2 if config.hook_layer is None else config.hook_layer
            if not -num_layers <= layer < num_layers:
                raise ValueError(f"calm.hook_layer {layer} is outside the model's {num_layers} "
                                 "decoder layers")
            self.hook_layer = layer % num_layers
            self._decoder_layers()  # fail now, not at the first step, if they cannot be found

        c, dim = config, config.dim
        concepts = num_concepts if c.prototypes.per_concept else 0
        modules: dict[str, nn.Module] = {
            "disentangler": Disentangler(hidden, dim, num_cultures, num_concepts,
                                         separate=c.disentangle.enabled,
                                         head_hidden_size=c.head_hidden_size,
                                         input_norm=c.input_norm, pooling=c.pooling,
                                         dropout=c.dropout)}
        if c.prototypes.enabled:
            modules["prototypes"] = CulturePrototypes(num_cultures, dim, concepts)
        if c.cross_attention.enabled:
            modules["cross_attention"] = CulturalCrossAttention(dim, c.cross_attention.num_heads,
                                                                c.cross_attention.dropout)
        if c.moe.enabled:
            modules["moe"] = CultureMoE(2 * dim, dim, c.moe.num_experts, c.moe.top_k,
                                        c.moe.expert_hidden_size, c.dropout)
        else:
            modules["moe"] = nn.Linear(2 * dim, dim)
        if c.fusion.enabled:
            modules["fusion"] = IdentityFusion(hidden, dim, c.fusion.gate, c.fusion.gate_bias_init)
            if c.injection == "prefix":
                modules["prefix"] = PrefixEncoder(hidden, c.prefix_tokens)
        if num_labels > 0 and c.heads.classification:
            head_in = hidden + (dim if c.disentangle.enabled else 0)
            modules["classifier"] = nn.Sequential(nn.Dropout(c.heads.dropout),
                                                  nn.Linear(head_in, num_labels))
        self.calm = nn.ModuleDict(modules)
        if c.freeze_base:
            for param in base.parameters():
                param.requires_grad_(False)
        try:
            device = next(base.parameters()).device
        except StopIteration:  # pragma: no cover
            device = torch.device("cpu")
        self.calm.to(device)

    # ---- helpers -----------------------------------------------------------------------------

    @property
    def config(self) -> Any:
        """The base model's Hugging Face config (code that reads ``model.config`` keeps
        working); the CALM config is ``calm_config``."""
        return self.base.config

    @property
    def injecting(self) -> bool:
        return self.calm_config.fusion.enabled and self.calm_config.injection != "none"

    def _decoder_layers(self) -> nn.ModuleList:
        for _, module in self.base.named_modules():
            if isinstance(module, nn.ModuleList) and len(module) == self.num_layers:
                return module
        raise ValueError("injection 'hook': no ModuleList of the model's "
                         f"{self.num_layers} decoder layers found; use injection 'prefix'")

    def _calm_dtype(self) -> torch.dtype:
        return next(self.calm.parameters()).dtype

    def _base_trainable(self) -> bool:
        return any(param.requires_grad for param in self.base.parameters())

    def _read_hidden(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Hidden states at ``feature_layer`` from a pass without injection and without the
        vocabulary projection (``get_decoder()`` where the model has one)."""
        need_grad = (torch.is_grad_enabled() and self.calm_config.features_grad
                     and self._base_trainable())
        with torch.set_grad_enabled(need_grad):
            backbone = None
            getter = getattr(self.base, "get_decoder", None)
            if callable(getter):
                try:
                    backbone = getter()
                except (AttributeError, NotImplementedError, ValueError):
                    backbone = None
            if backbone is not None and backbone is not self.base:
                out = backbone(input_ids=input_ids, attention_mask=mask,
                               position_ids=_positions(mask), output_hidden_states=True,
                               use_cache=False)
            else:
                out = self.base(input_ids=input_ids, attention_mask=mask,
                                position_ids=_positions(mask), output_hidden_states=True,
                                use_cache=False)
            return out.hidden_states[self.calm_config.feature_layer]

    def _identity(self, hidden: torch.Tensor, mask: torch.Tensor, culture_ids, concept_ids,
                  class_labels) -> IdentityParts:
        return read_identity(self.calm, self.calm_config, hidden.to(self._calm_dtype()), mask,
                             culture_ids, concept_ids, class_labels)

    @contextlib.contextmanager
    def _hook(self, z: torch.Tensor) -> Iterator[None]:
        """Adds ``g * W(z)`` to the output of decoder layer ``hook_layer`` while open."""
        layer = self._decoder_layers()[self.hook_layer]
        fusion = self.calm["fusion"]
        if (torch.is_grad_enabled() and _hooks_inside_checkpoint(layer)
                and getattr(layer, "gradient_checkpointing", False) and layer.training):
            raise RuntimeError("injection 'hook' with gradient checkpointing needs "
                               "transformers >= 5 (older versions replay the hook in backward "
                               "without its state); use injection 'prefix' or turn "
                               "gradient checkpointing off")

        def inject(module, args, output):
            states = output[0] if isinstance(output, tuple) else output
            zz = z
            if states.shape[0] != zz.shape[0]:  # num_return_sequences / beams expand the batch
                zz = zz.repeat_interleave(states.shape[0] // zz.shape[0], dim=0)
            fused = fusion(states, zz)[0]
            return (fused, *output[1:]) if isinstance(output, tuple) else fused

        handle = layer.register_forward_hook(inject)
        try:
            yield
        finally:
            handle.remove()

    def _prefix_inputs(self, input_ids, mask, labels, ident: IdentityParts):
        """(inputs_embeds, attention_mask, labels) with the soft prefix, or None when every
        sample's gate is exactly closed (then the LM runs on input_ids as the base model)."""
        if not bool(ident.prefix_active.any()):
            return None
        embeds = self.base.get_input_embeddings()(input_ids)
        prefix = self.calm["prefix"](ident.prefix_delta).to(embeds.dtype)
        mask, labels = extend_for_prefix(mask, labels, prefix.shape[1], ident.prefix_active)
        return torch.cat([prefix, embeds], dim=1), mask, labels

    # ---- public ------------------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, culture_ids: torch.Tensor | None = None,
                concept_ids: torch.Tensor | None = None,
                class_labels: torch.Tensor | None = None,
                identity_mask: torch.Tensor | None = None) -> CalmOutput:
        """``identity_mask`` [B, T]: the tokens the identity state is read from (default: every
        non-pad token). A policy scoring (prompt, response) sequences passes the prompt's mask,
        so the response is scored under the identity ``generate`` computed from the prompt
        alone: the reading pass is causal, so the prompt's hidden states are the same in the
        longer sequence."""
        c = self.calm_config
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        read_mask = mask if identity_mask is None else identity_mask.to(mask.dtype) * mask
        lm_labels = labels if c.heads.lm else None
        positions = _positions(mask)
        if not self.injecting:  # one pass: the LM is the base model
            out = self.base(input_ids=input_ids, attention_mask=mask, labels=lm_labels,
                            position_ids=positions, output_hidden_states=True, use_cache=False)
            ident = self._identity(out.hidden_states[c.feature_layer], read_mask, culture_ids,
                                   concept_ids, class_labels)
            logits, lm_loss = out.logits, out.loss
        else:
            ident = self._identity(self._read_hidden(input_ids, mask), read_mask, culture_ids,
                                   concept_ids, class_labels)
            if c.injection == "hook":
                with self._hook(ident.z):
                    out = self.base(input_ids=input_ids, attention_mask=mask, labels=lm_labels,
                                    position_ids=positions, use_cache=False)
                logits = out.logits
            else:
                prefixed = self._prefix_inputs(input_ids, mask, lm_labels, ident)
                if prefixed is None:
                    out = self.base(input_ids=input_ids, attention_mask=mask, labels=lm_labels,
                                    position_ids=positions, use_cache=False)
                    logits = out.logits
                else:
                    embeds, ext_mask, ext_labels = prefixed
                    out = self.base(inputs_embeds=embeds, attention_mask=ext_mask,
                                    labels=ext_labels, position_ids=_positions(ext_mask),
                                    use_cache=False)
                    logits = out.logits[:, embeds.shape[1] - input_ids.shape[1]:]
            lm_loss = out.loss
        losses = dict(ident.losses)
        if lm_labels is not None and lm_loss is not None:
            losses["lm"] = lm_loss
        return CalmOutput(loss=self.total_loss(losses), losses=losses, logits=logits,
                          class_logits=ident.class_logits, gate_weights=ident.gate_weights,
                          identity=ident.identity, features=ident.features)

    def total_loss(self, losses: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """lm + classification + lambda_contrastive * (contrastive + prototype)
        + lambda_orth * orthogonality + lambda_balance * load_balance
        + lambda_culture * culture, over the terms present."""
        c = self.calm_config
        weights = {"lm": 1.0, "classification": 1.0, "contrastive": c.lambda_contrastive,
                   "prototype": c.lambda_contrastive, "orthogonality": c.lambda_orth,
                   "load_balance": c.lambda_balance, "culture": c.lambda_culture}
        terms = [weights[name] * value for name, value in losses.items()]
        return torch.stack([t.float() for t in terms]).sum() if terms else None

    @torch.no_grad()
    def identity_state(self, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor | None = None,
                       identity_mask: torch.Tensor | None = None) -> CalmOutput:
        """Classification logits, gate weights, identity and features of a batch from the
        reading pass alone (no injection pass, no losses; ``logits`` is empty): value
        identification and routing analysis at evaluation time. ``identity_mask`` as in
        :meth:`forward`."""
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        read_mask = mask if identity_mask is None else identity_mask.to(mask.dtype) * mask
        ident = self._identity(self._read_hidden(input_ids, mask), read_mask, None, None, None)
        return CalmOutput(None, {}, torch.empty(0), ident.class_logits,
                          ident.gate_weights, ident.identity, ident.features)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 **kwargs: Any):
        """``base.generate`` with the identity (computed once from the prompt) injected;
        returns prompt + new tokens in both injection modes (or the generate output object
        with such ``sequences``)."""
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        if not self.injecting:
            return self.base.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
        ident = self._identity(self._read_hidden(input_ids, mask), mask, None, None, None)
        if self.calm_config.injection == "hook":
            with self._hook(ident.z):
                return self.base.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
        prefixed = self._prefix_inputs(input_ids, mask, None, ident)
        if prefixed is None:
            return self.base.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
        embeds, ext_mask, _ = prefixed
        out = self.base.generate(inputs_embeds=embeds, attention_mask=ext_mask, **kwargs)
        # With inputs_embeds only the new tokens come back; put the prompt in front (once per
        # returned sequence: num_return_sequences repeats each prompt in place).
        sequences = out if isinstance(out, torch.Tensor) else out.sequences
        prompts = input_ids.repeat_interleave(sequences.shape[0] // input_ids.shape[0], dim=0)
        sequences = torch.cat([prompts, sequences], dim=1)
        if isinstance(out, torch.Tensor):
            return sequences
        out.sequences = sequences
        return out


def build_calm_model(base_model: nn.Module, config: CalmConfig, num_cultures: int,
                     num_labels: int, num_concepts: int = 0) -> CalmModel:
    """Wrap ``base_model`` (a Hugging Face causal LM, plain or peft) in the CALM modules."""
    return CalmModel(base_model, config, num_cultures, num_labels, num_concepts)


__all__ = [
    "CalmModel", "CalmOutput", "CultureMoE", "CulturalCrossAttention", "CulturePrototypes",
    "DisentangledFeatures", "Disentangler", "IdentityFusion", "MoEOutput", "PrefixEncoder",
    "build_calm_model", "calm_parameters", "calm_state_dict", "extend_for_prefix",
    "load_balancing_loss", "load_calm_state", "masked_cross_entropy", "orthogonality_loss",
    "pool_tokens", "prototype_loss", "routing_by_culture", "supervised_contrastive_loss",
    "top_k_gating", "IGNORE_INDEX",
]
