"""Losses of the reflection loop's update (pure functions on tensors, unit-tested by hand).

The policy learns from pairs (revised answer = chosen, initial answer = rejected) under the same
prompt: an SFT term on the chosen tokens and DPO's pairwise term (Rafailov et al. 2023),

    -log sigmoid(beta * ((log pi(c) - log ref(c)) - (log pi(r) - log ref(r))))

with sequence log-probabilities summed over response tokens.
"""

from __future__ import annotations

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
