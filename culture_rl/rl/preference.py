"""Losses of the reflection loop's update (pure functions on tensors, unit-tested by hand).

The policy learns from pairs (revised answer = chosen, initial answer = rejected) under the same
prompt: an SFT term on the chosen tokens and DPO's pairwise term (Rafailov et al. 2023),

    -log sigmoid(beta * ((log pi(c) - log ref(c)) - (log pi(r) - log ref(r))))

with sequence log-probabilities summed over response tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from culture_rl.rl.ppo import masked_mean


def sequence_log_prob(log_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of per-token log-probs over each sequence's response tokens: [B, T] -> [B]."""
    return (log_probs * mask.to(log_probs.dtype)).sum(-1)


def sft_loss(log_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood per response token (over the whole batch's tokens)."""
    return -masked_mean(log_probs, mask.to(log_probs.dtype))


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             reference_chosen: torch.Tensor, reference_rejected: torch.Tensor,
             beta: float) -> dict[str, torch.Tensor]:
    """DPO on sequence log-probs [B]: the loss (mean over pairs), the mean implicit reward
    margin beta * (chosen log-ratio - rejected log-ratio), and the share of pairs whose margin
    is positive (preference accuracy)."""
    margin = beta * ((policy_chosen - reference_chosen) - (policy_rejected - reference_rejected))
    return {"loss": -F.logsigmoid(margin).mean(), "margin": margin.mean().detach(),
            "accuracy": (margin > 0).float().mean().detach()}


def reflection_loss(chosen_log_probs: torch.Tensor, chosen_mask: torch.Tensor,
                    rejected_log_probs: torch.Tensor, rejected_mask: torch.Tensor,
                    reference_chosen: torch.Tensor, reference_rejected: torch.Tensor, *,
                    sft_coef: float, preference_coef: float, beta: float
                    ) -> dict[str, torch.Tensor]:
    """sft_coef x SFT(chosen) + preference_coef x DPO(chosen over rejected). Per-token log-probs
    [B, T]; the reference log-probs are per token too (summed here like the policy's)."""
    sft = sft_loss(chosen_log_probs, chosen_mask)
    dpo = dpo_loss(sequence_log_prob(chosen_log_probs, chosen_mask),
                   sequence_log_prob(rejected_log_probs, rejected_mask),
                   sequence_log_prob(reference_chosen, chosen_mask),
                   sequence_log_prob(reference_rejected, rejected_mask), beta)
    return {"loss": sft_coef * sft + preference_coef * dpo["loss"], "sft_loss": sft.detach(),
            "preference_loss": dpo["loss"].detach(), "preference_margin": dpo["margin"],
            "preference_accuracy": dpo["accuracy"]}


# ------------------------------------------------------------------ the DPO stage's losses
# The offline stage (`culture-rl dpo`) trains with TRL's DPOTrainer; a loss of ours is a setting
# of TRL's: loss types, their weights and label_smoothing. Registered pure functions of the
# smoothing epsilon.

@dataclass(frozen=True)
class TrlPreferenceLoss:
    loss_type: list[str]
    loss_weights: list[float] | None  # None: TRL's equal weights
    label_smoothing: float


def _dpo(epsilon: float) -> TrlPreferenceLoss:
    return TrlPreferenceLoss(["sigmoid"], None, 0.0)


def _ipo(epsilon: float) -> TrlPreferenceLoss:
    return TrlPreferenceLoss(["ipo"], None, 0.0)


def _robust(epsilon: float) -> TrlPreferenceLoss:
    return TrlPreferenceLoss(["robust"], None, epsilon)


def _cdpo(epsilon: float) -> TrlPreferenceLoss:
    """Conservative DPO (Mitchell 2023; OpenRLHF's and older TRL's ``label_smoothing`` on the
    sigmoid loss): each label is flipped with probability eps, so with x = beta * margin

        cdpo(x) = -(1 - eps) log s(x) - eps log s(-x) = L(x) + eps x,    L(x) = -log s(x)

    (as -log s(-x) = L(x) + x). TRL 1.16 dropped the smoothing from 'sigmoid'; its 'robust'
    loss (rDPO) is [(1 - eps) L(x) - eps (L(x) + x)] / (1 - 2 eps) = L(x) - eps x / (1 - 2 eps),
    so (2 - 2 eps) L(x) - (1 - 2 eps) rDPO(x) = L(x) + eps x: cDPO exactly, from TRL's own
    terms (tests/unit/test_dpo_stage.py checks it on DPOTrainer's loss)."""
    return TrlPreferenceLoss(["sigmoid", "robust"], [2 - 2 * epsilon, -(1 - 2 * epsilon)],
                             epsilon)


PREFERENCE_LOSSES: dict[str, Callable[[float], TrlPreferenceLoss]] = {
    "dpo": _dpo, "ipo": _ipo, "cdpo": _cdpo, "robust": _robust}


def cdpo_loss(margin: torch.Tensor, beta: float, epsilon: float) -> torch.Tensor:
    """The conservative DPO loss by its definition, on reward margins [B] (mean over pairs)."""
    x = beta * margin
    return (-(1 - epsilon) * F.logsigmoid(x) - epsilon * F.logsigmoid(-x)).mean()
