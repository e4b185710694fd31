"""Every function of culture_rl.rl.ppo against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from culture_rl.rl import ppo

MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def test_masked_mean_var_whiten():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]])
    assert ppo.masked_mean(x, MASK).item() == pytest.approx(3.0)  # (1+2+3+4+5)/5
    assert ppo.masked_mean(x, MASK, dim=1).tolist() == pytest.approx([2.0, 4.5])
    assert ppo.masked_var(x, MASK).item() == pytest.approx(2.5)  # unbiased var of 1..5
    assert ppo.masked_var(x, MASK, unbiased=False).item() == pytest.approx(2.0)
    white = ppo.masked_whiten(x, MASK)
    assert white[1, 2].item() == 0.0
    assert white[0, 0].item() == pytest.approx((1 - 3) / math.sqrt(2.5), rel=1e-5)
    assert ppo.masked_mean(white, MASK).item() == pytest.approx(0.0, abs=1e-6)
    assert ppo.masked_mean(x, torch.zeros_like(x), dim=1).tolist() == [0.0, 0.0]  # no NaN


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    assert ppo.kl_k1(logp, ref).tolist() == pytest.approx([0.5, -1.0])
    assert ppo.kl_k2(logp, ref).tolist() == pytest.approx([0.125, 0.5])
    expected = [math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1]
    assert ppo.kl_k3(logp, ref).tolist() == pytest.approx(expected)
    assert set(ppo.KL_ESTIMATORS) == {"k1", "k2", "k3"}


def test_token_level_rewards_put_the_score_on_the_last_real_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 9.9]])
    rewards = ppo.token_level_rewards(torch.tensor([1.0, -1.0]), kl, MASK, kl_coef=0.5)
    assert rewards.tolist()[0] == pytest.approx([-0.05, -0.1, -0.15 + 1.0])
    assert rewards.tolist()[1] == pytest.approx([-0.2, -0.25 - 1.0, 0.0])


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    mask = torch.ones(1, 3)
    adv, ret = ppo.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    d2 = 1.0 - 0.7
    d1 = 0.0 + 0.9 * 0.7 - 0.6
    d0 = 0.0 + 0.9 * 0.6 - 0.5
    a2 = d2
    a1 = d1 + 0.9 * 0.8 * a2
    a0 = d0 + 0.9 * 0.8 * a1
    assert adv[0].tolist() == pytest.approx([a0, a1, a2])
    assert ret[0].tolist() == pytest.approx([a0 + 0.5, a1 + 0.6, a2 + 0.7])


def test_gae_ignores_padding():
    rewards = torch.tensor([[0.0, 1.0, 5.0]])
    values = torch.tensor([[0.2, 0.4, 3.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv, _ = ppo.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    short, _ = ppo.gae(rewards[:, :2], values[:, :2], mask[:, :2], gamma=1.0, lam=1.0)
    assert adv[0, :2].tolist() == pytest.approx(short[0].tolist()) and adv[0, 2] == 0


def test_group_relative_advantage():
    scores = torch.tensor([1.0, 3.0, 10.0, 10.0])
    groups = torch.tensor([0, 0, 1, 1])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    adv, ret = ppo.compute_advantages("grpo", scores=scores, mask=mask, group_ids=groups)
    std = torch.tensor([1.0, 3.0]).std().item()  # sqrt(2)
    assert adv[0].tolist() == pytest.approx([-1 / std] * 2, rel=1e-5)
    assert adv[1].tolist() == pytest.approx([1 / std, 0.0], rel=1e-5)
    assert adv[2:].abs().sum() == 0  # identical scores: no signal, no NaN
    assert torch.equal(adv, ret)
    with pytest.raises(KeyError, match="registered"):
        ppo.compute_advantages("nope")


def test_clipped_policy_loss_by_hand():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    out = ppo.policy_loss("ppo_clip", log_probs=new, old_log_probs=old, advantages=adv,
                          mask=torch.ones(1, 3), clip_eps=0.2)
    # token 1: max(-1.5, -1.2) = -1.2 (clipped); token 2: max(0.5, 0.8) = 0.8 (clipped);
    # token 3: max(-2.2, -2.2) = -2.2 (equal, not counted as clipped)
    assert out["loss"].item() == pytest.approx((-1.2 + 0.8 - 2.2) / 3)
    assert out["clip_fraction"].item() == pytest.approx(2 / 3)
    assert out["approx_kl"].item() == pytest.approx(-new.sum().item() / 3)


def test_clipped_value_loss_by_hand():
    values = torch.tensor([[1.0, 0.0]])
    old = torch.tensor([[0.5, 0.1]])
    returns = torch.tensor([[2.0, 0.0]])
    out = ppo.clipped_value_loss(values, old, returns, torch.ones(1, 2), clip_eps=0.2)
    # token 1: clipped V = 0.7 -> max(1.0, 1.69) = 1.69; token 2: clipped = 0.0 -> max(0, 0)
    assert out["loss"].item() == pytest.approx(0.5 * (1.69 + 0.0) / 2)
    assert out["clip_fraction"].item() == pytest.approx(0.5)


def test_entropy_and_log_probs():
    uniform = torch.zeros(2, 4)
    assert ppo.entropy_from_logits(uniform).tolist() == pytest.approx([math.log(4)] * 2)
    peaked = torch.tensor([[100.0, 0.0, 0.0]])
    assert ppo.entropy_from_logits(peaked).item() == pytest.approx(0.0, abs=1e-6)
    logits = torch.tensor([[0.0, math.log(3.0)]])
    assert ppo.log_probs_of(logits, torch.tensor([1])).item() == pytest.approx(math.log(0.75))


def test_kl_controllers():
    fixed = ppo.FixedKLController(0.1)
    fixed.update(5.0, 10)
    assert fixed.value == 0.1
    adaptive = ppo.AdaptiveKLController(0.1, target=1.0, horizon=100)
    adaptive.update(3.0, 10)  # error clipped to +0.2 -> x (1 + 0.2 * 10 / 100)
    assert adaptive.value == pytest.approx(0.1 * 1.02)
    adaptive.update(0.5, 10)  # error -0.5 clipped to -0.2
    assert adaptive.value == pytest.approx(0.1 * 1.02 * 0.98)
    restored = ppo.AdaptiveKLController(0.5, 1.0, 100)
    restored.load_state_dict(adaptive.state_dict())
    assert restored.value == adaptive.value


def test_registries_refuse_duplicates():
    with pytest.raises(ValueError, match="twice"):
        ppo.register_kl_estimator("k1")(lambda a, b: a)


# ------------------------------------------------------------------ critic-free estimators
GROUPS = torch.tensor([0, 0, 0, 1, 1])
SCORES = torch.tensor([1.0, 2.0, 6.0, 4.0, 4.0])
ONE_TOKEN = torch.ones(5, 2)


def test_dr_grpo_is_grpo_without_the_std_division():
    adv, ret = ppo.compute_advantages("dr_grpo", scores=SCORES, mask=ONE_TOKEN, group_ids=GROUPS)
    # group 0 mean 3: -2, -1, +3; group 1: identical scores, no signal
    assert adv[:, 0].tolist() == pytest.approx([-2.0, -1.0, 3.0, 0.0, 0.0])
    assert torch.equal(adv, ret) and torch.equal(adv[:, 0], adv[:, 1])


def test_rloo_baseline_leaves_the_sample_itself_out():
    adv, _ = ppo.compute_advantages("rloo", scores=SCORES, mask=ONE_TOKEN, group_ids=GROUPS)
    # sample 0: 1 - (2 + 6) / 2 = -3; sample 1: 2 - 3.5 = -1.5; sample 2: 6 - 1.5 = 4.5
    assert adv[:, 0].tolist() == pytest.approx([-3.0, -1.5, 4.5, 0.0, 0.0])
    # = n / (n - 1) times GRPO's centring without the std (Dr. GRPO)
    dr, _ = ppo.compute_advantages("dr_grpo", scores=SCORES, mask=ONE_TOKEN, group_ids=GROUPS)
    assert torch.allclose(adv[:3], dr[:3] * 3 / 2)


def test_reinforce_pp_whitens_the_returns_over_the_whole_batch():
    rewards = torch.tensor([[0.0, -0.1, 1.0], [-0.2, 2.0, 0.0]])
    adv, ret = ppo.compute_advantages("reinforce_pp", rewards=rewards, mask=MASK, gamma=1.0)
    assert torch.allclose(ret, torch.tensor([[0.9, 0.9, 1.0], [1.8, 2.0, 0.0]]))
    real = torch.tensor([0.9, 0.9, 1.0, 1.8, 2.0])
    expected = (real - real.mean()) / real.std()  # masked_whiten: unbiased std over real tokens
    assert adv[MASK.bool()].tolist() == pytest.approx(expected.tolist(), rel=1e-4)
    assert adv[1, 2] == 0
    half, _ = ppo.compute_advantages("reinforce_pp", rewards=rewards, mask=MASK, gamma=0.5)
    assert not torch.allclose(half, adv)  # gamma discounts the later rewards


def test_reinforce_pp_baseline_subtracts_the_group_mean_score_first():
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    scores = torch.tensor([1.0, 3.0, 5.0, 9.0])
    groups = torch.tensor([0, 0, 1, 1])
    rewards = ppo.token_level_rewards(scores, torch.zeros(4, 2), mask, 0.0)
    _, ret = ppo.compute_advantages("reinforce_pp_baseline", rewards=rewards, scores=scores,
                                    mask=mask, group_ids=groups, gamma=1.0)
    # group means 2 and 7: the returns are the centred scores on every real token
    assert torch.allclose(ret, torch.tensor([[-1.0, -1.0], [1.0, 0.0], [-2.0, -2.0], [2.0, 2.0]]))


def test_the_config_knows_which_registered_estimators_train_no_critic():
    from culture_rl.config.ppo import CRITIC_FREE_ESTIMATORS, GROUP_ESTIMATORS

    assert set(CRITIC_FREE_ESTIMATORS) <= set(ppo.ADVANTAGE_ESTIMATORS)
    assert set(GROUP_ESTIMATORS) <= set(CRITIC_FREE_ESTIMATORS)
    assert {n for n in ppo.ADVANTAGE_ESTIMATORS if ppo.needs_critic(n)} == {"gae"}
    assert set(ppo.SEQUENCE_LEVEL_ESTIMATORS) <= set(GROUP_ESTIMATORS)


# ------------------------------------------------------------------ loss shapes
def test_loss_aggregations_by_hand():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert ppo.aggregate_loss(per_token, mask).item() == pytest.approx(10 / 4)
    assert ppo.aggregate_loss(per_token, mask, "seq_mean_token_mean").item() == pytest.approx(
        (2.0 + 4.0) / 2)
    # Dr. GRPO: token sums over one constant length, so a long answer is not diluted
    assert ppo.aggregate_loss(per_token, mask, "seq_mean_token_sum", 8).item() == pytest.approx(
        (6 / 8 + 4 / 8) / 2)
    assert ppo.aggregate_loss(per_token, mask, "seq_mean_token_sum").item() == pytest.approx(
        (6 / 3 + 4 / 3) / 2)  # 0: the padded width
    with pytest.raises(ValueError, match="aggregation"):
        ppo.aggregate_loss(per_token, mask, "median")


def test_clip_higher_lets_a_good_token_rise_further_than_a_bad_one_falls():
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.5, 0.5]]))
    adv = torch.tensor([[1.0, -1.0]])
    out = ppo.policy_loss("ppo_clip", log_probs=new, old_log_probs=old, advantages=adv,
                          mask=torch.ones(1, 2), clip_eps=0.2, clip_low=0.2, clip_high=0.28)
    # token 1: max(-1.5, -1.28) = -1.28; token 2: max(0.5, 0.8) = 0.8
    assert out["loss"].item() == pytest.approx((-1.28 + 0.8) / 2)


def test_gspo_uses_one_geometric_mean_ratio_per_sequence():
    old = torch.zeros(2, 2)
    new = torch.log(torch.tensor([[1.1, 1.0], [2.0, 0.5]])).requires_grad_()
    adv = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    out = ppo.policy_loss("gspo", log_probs=new, old_log_probs=old, advantages=adv, mask=mask,
                          clip_eps=0.2)
    # sequence 0: ratio sqrt(1.1 * 1.0) = 1.0488, inside the clip: -1.0488; sequence 1: its
    # one real token, ratio 2.0 clipped to 1.2 against advantage 1: -1.2. Mean over sequences.
    assert out["loss"].item() == pytest.approx((-math.sqrt(1.1) - 1.2) / 2, rel=1e-5)
    assert out["clip_fraction"].item() == pytest.approx(0.5)
    out["loss"].backward()
    # the gradient of the sequence ratio: every token of sequence 0 the same, -s_0 / (2 * 2)
    assert new.grad[0].tolist() == pytest.approx([-math.sqrt(1.1) / 4] * 2, rel=1e-5)
    assert new.grad[1].tolist() == pytest.approx([0.0, 0.0])  # clipped, and padding


def test_entropy_and_token_log_probs_match_trls_own_functions():
    # TRL 1.16 keeps these two as functions (its GRPO advantages and losses are inline in the
    # trainer); the same tensors must give the same numbers, to float32 rounding (the two sum
    # in different orders: differences of ~1e-6 on logits of size ~10, on any CPU).
    from trl.trainer.utils import entropy_from_logits, selective_log_softmax

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=generator) * 3
    tokens = torch.randint(0, 11, (3, 5), generator=generator)
    assert torch.allclose(ppo.entropy_from_logits(logits), entropy_from_logits(logits),
                          atol=1e-5)
    assert torch.allclose(ppo.log_probs_of(logits, tokens), selective_log_softmax(logits, tokens),
                          atol=1e-5)


def test_overlong_penalty_ramps_over_the_buffer_by_hand():
    lengths = torch.tensor([10, 16, 18, 20])
    # max 20, buffer 4: free up to 16 tokens, then -1/4 per token, -1 at the limit
    assert ppo.overlong_penalty(lengths, 20, 4).tolist() == pytest.approx(
        [0.0, 0.0, -0.5, -1.0])
    assert ppo.overlong_penalty(lengths, 20, 4, factor=0.5)[3].item() == pytest.approx(-0.5)
