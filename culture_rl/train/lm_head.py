"""The LM head TRL's trainers score on CPU: dense logits instead of TRL's chunked kernel (see
:func:`use_dense_lm_head`; what it buys is measured in docs/benchmarks.md)."""

from __future__ import annotations


# Largest logits tensor (bytes, float32) the dense CPU LM head below materialises per forward;
# above it TRL's chunked head runs (it never builds the full logits).
DENSE_LM_HEAD_MAX_BYTES = 256 * 2 ** 20


def use_dense_lm_head(trainer) -> bool:
    """On CPU, score the LM head densely instead of with TRL's chunked log-prob kernel.

    TRL's ``SFTTrainer`` and ``DPOTrainer`` (1.16) patch the model so the loss never materialises the
    ``(batch, seq, vocab)`` logits: the head is projected in tiles and re-projected in the
    backward pass. That saves GPU memory on large vocabularies; on CPUs, without its Triton
    kernel, the tiles run as a dozen element-wise torch ops each and the recomputation doubles
    the head's matmul — a third of each training step of the tiny model went there (py-spy,
    docs/benchmarks.md). This swaps in a forward that returns the same ``FusedCausalLMOutput``
    fields TRL's losses and metrics read (per-token log-probs, entropy, top-1 hits, mean
    logits, label mask) from ordinary logits and ``log_softmax``, so the loss and logged
    metrics are the same numbers; a batch whose logits would exceed ``DENSE_LM_HEAD_MAX_BYTES`` still goes through
    TRL's kernel. Models with logit soft-capping, logit scaling or router losses keep TRL's
    head. Returns whether the swap was made."""
    import types

    import torch
    from trl.trainer.utils import FusedCausalLMOutput

    model = trainer.model
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    chunked_forward = model.__dict__.get("forward")  # TRL's patch is an instance attribute
    text_config = model.config.get_text_config()
    if chunked_forward is None or any(
            getattr(text_config, name, None) is not None
            for name in ("final_logit_softcapping", "logit_scale", "output_multiplier",
                         "lm_head_multiplier", "logits_scaling", "output_router_logits")):
        return False
    vocab = model.get_output_embeddings().weight.shape[0]

    def dense_forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None,
                      num_items_in_batch=None, **kwargs):
        rows = labels if shift_labels is None else shift_labels
        if (not fused_lm_head or args or rows is None
                or rows.numel() * vocab * 4 > DENSE_LM_HEAD_MAX_BYTES):
            return chunked_forward(*args, fused_lm_head=fused_lm_head, labels=labels,
                                   shift_labels=shift_labels,
                                   num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(**kwargs).last_hidden_state
        if shift_labels is None:
            hidden, rows = hidden[:, :-1], labels[:, 1:]
        mask = rows != -100
        logits = self.get_output_embeddings()(hidden).float()
        log_z = torch.logsumexp(logits, dim=-1)
        targets = rows.clamp(min=0)
        log_probs = (logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_z
                     ).masked_fill(~mask, 0)
        with torch.no_grad():  # metrics only, as TRL's SFT and DPO use them
            log_p = logits - log_z.unsqueeze(-1)
            entropy = -(log_p.exp() * log_p).sum(-1).masked_fill(~mask, 0)
            is_top1 = (logits.argmax(-1) == targets) & mask
            mean_logits = logits.mean(-1).masked_fill(~mask, 0)
        loss = -log_probs.sum() / (mask.sum().clamp(min=1) if num_items_in_batch is None
                                   else num_items_in_batch)
        return FusedCausalLMOutput(loss=loss, log_probs=log_probs, entropy=entropy,
                                   is_top1=is_top1, label_mask=mask, mean_logits=mean_logits)

    model.forward = types.MethodType(dense_forward, model)
    return True
