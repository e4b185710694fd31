"""Forward passes over (prompt, response) sequences, shared by the policy, reference and critic.

A sequence is the left-padded prompt followed by the right-padded response, so every response
starts at the same column ``P``. The logits at columns ``P-1 .. P+T-2`` predict the response
tokens; the critic's value of "the state before response token t" sits at the same columns.
Position ids are counted over real tokens only, exactly as ``generate`` counts them, so the
trainer's log-probs of a sampled response match the generator's (the check that weight sync
worked: see ``logprob_gap`` in the controller's metrics).
"""

from __future__ import annotations

import torch
from torch import nn

from culture_rl.rl.experience import Experience
from culture_rl.rl.ppo import entropy_from_logits, log_probs_of


def sequence_inputs(exp: Experience) -> dict[str, torch.Tensor]:
    input_ids = torch.cat([exp.prompt_ids, exp.response_ids], dim=1)
    attention_mask = torch.cat([exp.prompt_mask, exp.response_mask], dim=1).long()
    position_ids = (attention_mask.cumsum(1) - 1).clamp_min(0)
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "position_ids": position_ids}


def reads_prompt_identity(model) -> bool:
    """Whether ``model`` (or the model a DeepSpeed engine or CalmPolicy wraps in ``.module``)
    reads a state from the prompt alone before generating, as a CALM policy's identity state:
    its forward then needs the prompt's mask (see :func:`response_log_probs`)."""
    while model is not None:
        if getattr(type(model), "reads_prompt_identity", False):
            return True
        # The submodule itself, not attribute lookup: a DeepSpeed engine's __getattr__ would
        # answer from the model it wraps.
        model = model._modules.get("module") if isinstance(model, nn.Module) else None
    return False


def _response_columns(exp: Experience) -> slice:
    start = exp.prompt_ids.shape[1] - 1
    return slice(start, start + exp.response_ids.shape[1])


def response_log_probs(model, exp: Experience, with_entropy: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(response token) [B, T] under ``model`` (and the per-token entropy if asked).

    A model that reads a state from the prompt (a CALM policy's identity) gets the prompt's
    mask as ``identity_mask``: the generator computed that state before the first response
    token, so the response is scored under the same one."""
    inputs = sequence_inputs(exp)
    if reads_prompt_identity(model):
        inputs["identity_mask"] = torch.cat(
            [exp.prompt_mask, torch.zeros_like(exp.response_mask)], dim=1).long()
    output = model(**inputs, use_cache=False)
    logits = output.logits[:, _response_columns(exp)]
    log_probs = log_probs_of(logits, exp.response_ids)
    entropy = entropy_from_logits(logits) if with_entropy else None
    return log_probs, entropy


class ValueModel(nn.Module):
    """The critic: a causal LM's backbone (its hidden states) and a scalar value head.

    The head starts at zero so the first value estimates do not inject noise into GAE.
    """

    def __init__(self, causal_lm):
        super().__init__()
        self.backbone = causal_lm.get_decoder() if hasattr(causal_lm, "get_decoder") else causal_lm
        hidden = causal_lm.config.hidden_size
        self.config = causal_lm.config
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask, position_ids=None, **_):
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids, use_cache=False).last_hidden_state
        return self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)


def response_values(critic: nn.Module, exp: Experience) -> torch.Tensor:
    """V(state before each response token) [B, T]."""
    values = critic(**sequence_inputs(exp))
    return values[:, _response_columns(exp)].float()
