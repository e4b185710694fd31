"""PPO maths as pure functions on tensors.

Shapes: ``[B, T]`` per response token (B responses, T response positions, right-padded), with a
0/1 ``mask`` marking real tokens; ``[B]`` per response. Advantage estimators, policy losses and
KL estimators live in small registries, so a new one is one decorated function (verl's
``@register_adv_est`` idea).
"""

from __future__ import annotations

import torch

from culture_rl.config.ppo import CRITIC_FREE_ESTIMATORS
from culture_rl.rl.registry import Registry

ADVANTAGE_ESTIMATORS = Registry("advantage estimator")
POLICY_LOSSES = Registry("policy loss")
KL_ESTIMATORS = Registry("KL estimator")
register_advantage_estimator = ADVANTAGE_ESTIMATORS.register
register_policy_loss = POLICY_LOSSES.register
register_kl_estimator = KL_ESTIMATORS.register


# ------------------------------------------------------------------------------ masked stats


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    return (values * mask).sum() if dim is None else (values * mask).sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over the real tokens; a row with no real token gives 0, not NaN."""
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(values, mask, dim) / count.clamp_min(1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    count = mask.sum()
    if unbiased and count > 1:
        variance = variance * count / (count - 1)
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the real tokens; padding stays 0."""
    mean, variance = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


# ------------------------------------------------------------------------------ rewards, KL


@register_kl_estimator("k1")
def kl_k1(log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    """log p - log q: unbiased, high variance, can be negative per token."""
    return log_probs - ref_log_probs


@register_kl_estimator("k2")
def kl_k2(log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    """0.5 (log p - log q)^2: biased, low variance, never negative."""
    return 0.5 * (log_probs - ref_log_probs) ** 2


@register_kl_estimator("k3")
def kl_k3(log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    """exp(log q - log p) - (log q - log p) - 1: unbiased and never negative (Schulman)."""
    log_ratio = ref_log_probs - log_probs
    return torch.exp(log_ratio) - log_ratio - 1


def token_level_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor,
                        kl_coef: float) -> torch.Tensor:
    """Per-token rewards: -kl_coef * KL on every real token, plus the sequence score on the
    last real token (the RLHF reward shape of Ziegler et al. / OpenRLHF)."""
    rewards = -kl_coef * kl * mask
    last = (mask.sum(1).long() - 1).clamp_min(0)
    has_tokens = mask.sum(1) > 0
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows[has_tokens], last[has_tokens]] += scores[has_tokens].to(rewards.dtype)
    return rewards


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, coef: float):
        self.value = coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


class AdaptiveKLController(FixedKLController):
    """Ziegler et al. (2019): move the coefficient so the measured KL tracks ``target``;
    the proportional error is clipped to +-0.2 and scaled by n_steps / horizon."""

    def __init__(self, init_coef: float, target: float, horizon: int):
        super().__init__(init_coef)
        self.target, self.horizon = target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon


# ------------------------------------------------------------------------------ advantages


@register_advantage_estimator("gae")
def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0,
        lam: float = 0.95, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation. Returns (advantages, returns), both [B, T], zero on
    padding. delta_t = r_t + gamma V_{t+1} - V_t; A_t = delta_t + gamma lam A_{t+1}."""
    rewards, values = rewards * mask, values * mask
    steps = rewards.shape[1]
    running = torch.zeros_like(rewards[:, 0])
    reversed_advantages = []
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] if t + 1 < steps else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        reversed_advantages.append(running)
    advantages = torch.stack(reversed_advantages[::-1], dim=1) * mask
    return advantages, (advantages + values) * mask


@register_advantage_estimator("grpo")
def group_relative(scores: torch.Tensor, mask: torch.Tensor, *, group_ids: torch.Tensor,
                   normalize_std: bool = True, eps: float = 1e-6, **_
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO: no critic. A response's advantage is its score minus its group's mean (the other
    samples of the same prompt), divided by the group's std; broadcast to its tokens."""
    advantages = torch.zeros_like(scores, dtype=torch.float32)
    for group in torch.unique(group_ids):
        members = group_ids == group
        group_scores = scores[members].float()
        centred = group_scores - group_scores.mean()
        if normalize_std and members.sum() > 1:
            centred = centred / (group_scores.std() + eps)
        advantages[members] = centred
    per_token = advantages.unsqueeze(1) * mask
    return per_token, per_token


def _per_group(scores: torch.Tensor, group_ids: torch.Tensor, fn) -> torch.Tensor:
    """``fn(group's scores) -> their advantages``, group by group, as one float tensor."""
    out = torch.zeros_like(scores, dtype=torch.float32)
    for group in torch.unique(group_ids):
        members = group_ids == group
        out[members] = fn(scores[members].float())
    return out


@register_advantage_estimator("dr_grpo")
def dr_grpo(scores: torch.Tensor, mask: torch.Tensor, *, group_ids: torch.Tensor, **_
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like training"): GRPO without the
    division by the group's std, which weights questions by how (un)certain the model is; the
    other half, no length normalisation, is ``ppo.loss_aggregation: seq_mean_token_sum``."""
    per_token = _per_group(scores, group_ids, lambda s: s - s.mean()).unsqueeze(1) * mask
    return per_token, per_token


@register_advantage_estimator("rloo")
def rloo(scores: torch.Tensor, mask: torch.Tensor, *, group_ids: torch.Tensor, **_
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE leave-one-out (Ahmadian et al. 2024): a sample's baseline is the mean score
    of the other samples of its prompt, s_i - (sum_j s_j - s_i) / (n - 1); no critic."""
    def leave_one_out(s: torch.Tensor) -> torch.Tensor:
        n = s.numel()
        return s - (s.sum() - s) / (n - 1) if n > 1 else torch.zeros_like(s)
    per_token = _per_group(scores, group_ids, leave_one_out).unsqueeze(1) * mask
    return per_token, per_token


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = sum_{k >= t} gamma^(k-t) r_k over the real tokens of each row."""
    rewards = rewards * mask
    running = torch.zeros_like(rewards[:, 0])
    out = torch.zeros_like(rewards)
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        out[:, t] = running
    return out * mask


@register_advantage_estimator("reinforce_pp")
def reinforce_pp(rewards: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0, **_
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ (Hu 2025, OpenRLHF's ``reinforce``): the token-level reward (score on the
    last token, the KL penalty on every token) summed to a return per token, whitened over the
    whole batch (its "global advantage normalisation"); no critic and no group."""
    returns = discounted_returns(rewards, mask, gamma)
    return masked_whiten(returns, mask) * mask, returns


@register_advantage_estimator("reinforce_pp_baseline")
def reinforce_pp_baseline(rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, *,
                          group_ids: torch.Tensor, gamma: float = 1.0, **_
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++-baseline (OpenRLHF's ``reinforce_baseline``): each score minus its group's
    mean score first, then REINFORCE++ (returns of the token rewards, whitened globally)."""
    baseline = _per_group(scores, group_ids, lambda s: s.mean().expand_as(s))
    return reinforce_pp(token_level_rewards(-baseline, torch.zeros_like(rewards), mask, 0.0)
                        + rewards, mask, gamma=gamma)


# Estimators of one advantage per sequence: the KL penalty is folded into its score.
SEQUENCE_LEVEL_ESTIMATORS = ("grpo", "dr_grpo", "rloo")


def needs_critic(name: str) -> bool:
    """Whether an estimator learns from a value model (GAE); all others compare samples or
    returns and train no critic."""
    return name not in CRITIC_FREE_ESTIMATORS


def compute_advantages(name: str, **inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """The registered estimator ``name`` on ``inputs`` (scores, rewards, values, mask,
    group_ids, gamma, lam: each takes what it needs)."""
    return ADVANTAGE_ESTIMATORS.lookup(name)(**inputs)


def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int, factor: float = 1.0
                     ) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), added to each score: 0 up to
    ``max_length - buffer`` tokens, then falling linearly to ``-factor`` at ``max_length`` (a
    response that long was cut, not finished)."""
    over = (lengths.float() - (max_length - buffer)).clamp_min(0)
    return -factor * (over / buffer).clamp(max=1.0)


# ------------------------------------------------------------------------------ losses


def aggregate_loss(per_token: torch.Tensor, mask: torch.Tensor, mode: str = "token_mean",
                   max_length: int = 0) -> torch.Tensor:
    """Per-token losses [B, T] to one number (``ppo.loss_aggregation``): ``token_mean`` over
    every real token of the batch; ``seq_mean_token_mean``: each sequence's token mean, then
    the mean over sequences (long answers count no more than short ones); ``seq_mean_token_sum``
    each sequence's token sum over a constant ``max_length`` (the padded width when 0), then the
    mean: Dr. GRPO's fix of the length bias."""
    mask = mask.to(per_token.dtype)
    if mode == "token_mean":
        return masked_mean(per_token, mask)
    sums = (per_token * mask).sum(1)
    if mode == "seq_mean_token_mean":
        return (sums / mask.sum(1).clamp_min(1)).mean()
    if mode == "seq_mean_token_sum":
        return (sums / (max_length or mask.shape[1])).mean()
    raise ValueError(f"unknown loss aggregation {mode!r}")


@register_policy_loss("ppo_clip")
def clipped_policy_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor,
                        advantages: torch.Tensor, mask: torch.Tensor, *, clip_eps: float = 0.2,
                        clip_low: float | None = None, clip_high: float | None = None,
                        aggregation: str = "token_mean", max_length: int = 0,
                        **_) -> dict[str, torch.Tensor]:
    """PPO's clipped surrogate, the ratio clipped to [1 - low, 1 + high] (both ``clip_eps``
    unless given: DAPO's clip-higher sets high > low). Returns loss (aggregated as
    :func:`aggregate_loss` says), clip_fraction (share of tokens where the clipped term won)
    and approx_kl (mean of old - new log-prob)."""
    low, high = clip_low or clip_eps, clip_high or clip_eps
    ratio = torch.exp(log_probs - old_log_probs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - low, 1 + high)
    return {"loss": aggregate_loss(torch.maximum(unclipped, clipped), mask, aggregation,
                                   max_length),
            "clip_fraction": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean(old_log_probs - log_probs, mask)}


@register_policy_loss("gspo")
def sequence_policy_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor,
                         advantages: torch.Tensor, mask: torch.Tensor, *, clip_eps: float = 0.2,
                         clip_low: float | None = None, clip_high: float | None = None,
                         **_) -> dict[str, torch.Tensor]:
    """GSPO (Zheng et al. 2025): one importance ratio per sequence, the geometric mean of its
    token ratios, exp(mean_t(log pi - log pi_old)), clipped to [1 - low, 1 + high] (the paper
    uses 3e-4 and 4e-4: ratios this smooth move little), against the sequence's advantage (its
    tokens' mean); the mean over sequences. Written per token (GSPO-token) so every token of a
    sequence gets the sequence ratio's gradient: s_i,t = sg[s_i] pi_t / sg[pi_t]."""
    low, high = clip_low or clip_eps, clip_high or clip_eps
    mask = mask.to(log_probs.dtype)
    lengths = mask.sum(1).clamp_min(1)
    log_ratio = ((log_probs - old_log_probs) * mask).sum(1) / lengths
    token_ratio = torch.exp(log_ratio.detach().unsqueeze(1) + log_probs - log_probs.detach())
    seq_advantage = ((advantages * mask).sum(1) / lengths).unsqueeze(1)
    unclipped = -seq_advantage * token_ratio
    clipped = -seq_advantage * torch.clamp(token_ratio, 1 - low, 1 + high)
    per_token = torch.maximum(unclipped, clipped)
    return {"loss": aggregate_loss(per_token, mask, "seq_mean_token_mean"),
            "clip_fraction": ((clipped > unclipped)[:, 0].float()).mean(),
            "approx_kl": masked_mean(old_log_probs - log_probs, mask)}


def policy_loss(name: str, **inputs) -> dict[str, torch.Tensor]:
    return POLICY_LOSSES.lookup(name)(**inputs)


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       mask: torch.Tensor, clip_eps: float = 0.2) -> dict[str, torch.Tensor]:
    """0.5 * max((V - R)^2, (V_clipped - R)^2), V_clipped = V_old + clamp(V - V_old, +-eps)."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped_values - returns) ** 2
    return {"loss": 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask),
            "clip_fraction": masked_mean((loss_clipped > loss_unclipped).float(), mask)}


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax over the last dimension: logsumexp(z) - sum softmax(z) z."""
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.logsumexp(logits.float(), dim=-1) - (probs * logits.float()).sum(-1)


def log_probs_of(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under ``logits`` ([..., V] and [...] -> [...])."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
