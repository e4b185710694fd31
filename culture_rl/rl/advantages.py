"""A PPO step's rewards, advantages and returns from its scores and log-probs (pure)."""

from __future__ import annotations

import torch

from culture_rl.config.ppo import GROUP_ESTIMATORS
from culture_rl.rl import ppo
from culture_rl.rl.experience import Experience


def sequence_kl(old_log_probs: torch.Tensor, ref_log_probs: torch.Tensor, mask: torch.Tensor,
                estimator: str) -> torch.Tensor:
    """Per-token KL estimate against the reference, zero on padding."""
    return ppo.KL_ESTIMATORS.lookup(estimator)(old_log_probs, ref_log_probs) * mask


def compute_step_advantages(exp: Experience, *, estimator: str, kl_estimator: str,
                            kl_coef: float, gamma: float, lam: float, whiten: bool
                            ) -> Experience:
    """Fill rewards, advantages and returns of a batch that has scores, old and reference
    log-probs (and values, for GAE). The sequence-level estimators (GRPO, Dr. GRPO, RLOO) fold
    the KL penalty into each sequence's score; the token-level ones (GAE, REINFORCE++) put it
    on every token's reward, the score on the last."""
    mask = exp.response_mask.float()
    kl = sequence_kl(exp.old_log_probs, exp.ref_log_probs, mask, kl_estimator)
    group_ids = (torch.tensor([m["group"] for m in exp.meta])  # the prompt a sample answers
                 if estimator in GROUP_ESTIMATORS else None)
    if estimator in ppo.SEQUENCE_LEVEL_ESTIMATORS:
        scores = exp.scores.float() - kl_coef * kl.sum(1)
        rewards = ppo.token_level_rewards(scores, torch.zeros_like(kl), mask, 0.0)
    else:
        scores = exp.scores.float()
        rewards = ppo.token_level_rewards(scores, kl, mask, kl_coef)
    values = exp.values if exp.values is not None else torch.zeros_like(rewards)
    advantages, returns = ppo.compute_advantages(estimator, scores=scores, rewards=rewards,
                                                 values=values, mask=mask,
                                                 group_ids=group_ids, gamma=gamma, lam=lam)
    if whiten:
        advantages = ppo.masked_whiten(advantages, mask)
    exp.rewards, exp.advantages, exp.returns = rewards, advantages * mask, returns
    return exp
