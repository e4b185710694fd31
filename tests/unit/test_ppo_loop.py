"""Pure parts of the PPO loop: prompt iteration, batch accounting, step advantages, masks,
the resource plan and the metrics file."""

import json

import pytest
import torch

from culture_rl.distributed.cluster import Role, check_plan, describe_plan, plan_totals
from culture_rl.distributed.metrics import StepMetrics, gauge_name
from culture_rl.core.errors import ConfigError, ResourceError
from culture_rl.rl.advantages import compute_step_advantages
from culture_rl.rl.plan import BatchPlan
from culture_rl.rl.prompt_iterator import PromptIterator
from culture_rl.rl.experience import Experience
from culture_rl.rl.modeling import sequence_inputs
from culture_rl.inference.rollout import response_mask


def test_prompt_iterator_resumes_without_replay_or_skip():
    prompts = [{"id": i} for i in range(10)]
    straight = PromptIterator(prompts, batch_size=4, seed=3)
    seen = [[p["id"] for p in straight.next_batch()] for _ in range(6)]  # crosses 2 epochs

    first = PromptIterator(prompts, batch_size=4, seed=3)
    resumed_seen = [[p["id"] for p in first.next_batch()] for _ in range(3)]
    state = json.loads(json.dumps(first.state_dict()))  # as stored in a checkpoint
    second = PromptIterator(prompts, batch_size=4, seed=3)
    second.load_state_dict(state)
    resumed_seen += [[p["id"] for p in second.next_batch()] for _ in range(3)]
    assert resumed_seen == seen
    # every epoch is a permutation: each prompt once per 10 samples
    flat = [i for batch in seen for i in batch]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert flat[:10] != flat[10:20]  # reshuffled per epoch


def test_batch_plan_maps_samples_onto_ranks_and_rejects_bad_sizes():
    plan = BatchPlan(prompts_per_step=32, samples_per_prompt=4, trainer_ranks=2,
                     mini_batch_size=32, micro_batch_size=8, rollout_workers=2)
    plan.check()
    assert plan.samples_per_step == 128 and plan.accumulation == 2
    assert "micro 8 x accumulation 2 x 2 ranks" in plan.describe()
    with pytest.raises(ConfigError, match="ppo.mini_batch_size"):
        BatchPlan(32, 1, 1, 24, 8, 1).check()  # 32 samples not a multiple of 24
    with pytest.raises(ConfigError, match="micro_batch_size 8 x 3 trainer ranks"):
        BatchPlan(48, 1, 3, 16, 8, 1).check()


def _experience(scores, groups=None):
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.long)
    old = torch.tensor([[-1.0, -2.0, -1.0, 0.0], [-0.5, -0.5, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -0.5, 0.0], [-0.5, -1.0, 0.0, 0.0]])
    meta = [{"group": g} for g in (groups or [0, 1])]
    return Experience(prompt_ids=torch.ones(2, 2, dtype=torch.long),
                      prompt_mask=torch.ones(2, 2, dtype=torch.long),
                      response_ids=torch.ones(2, 4, dtype=torch.long), response_mask=mask,
                      old_log_probs=old, ref_log_probs=ref, values=torch.zeros(2, 4),
                      scores=torch.tensor(scores), meta=meta)


def test_step_advantages_gae_put_score_on_last_token_and_kl_on_every_token():
    exp = compute_step_advantages(_experience([1.0, -1.0]), estimator="gae", kl_estimator="k1",
                                  kl_coef=0.1, gamma=1.0, lam=1.0, whiten=False)
    # k1 per token = old - ref: row 0: 0.5, 0, -0.5; reward = -0.1 * kl, + score on the last
    assert exp.rewards[0].tolist() == pytest.approx([-0.05, 0.0, 0.05 + 1.0, 0.0])
    assert exp.rewards[1].tolist() == pytest.approx([0.0, -0.05 - 1.0, 0.0, 0.0])
    # values are zero, gamma = lam = 1: the advantage is the reward-to-go
    assert exp.advantages[0].tolist() == pytest.approx([1.0, 1.05, 1.05, 0.0])
    assert exp.returns[1].tolist() == pytest.approx([-1.05, -1.05, 0.0, 0.0])


def test_step_advantages_grpo_compare_samples_of_one_prompt():
    exp = compute_step_advantages(_experience([1.0, 0.0], groups=[7, 7]), estimator="grpo",
                                  kl_estimator="k1", kl_coef=0.0, gamma=1.0, lam=1.0,
                                  whiten=False)
    a, b = exp.advantages[0, 0].item(), exp.advantages[1, 0].item()
    assert a > 0 > b and a == pytest.approx(-b)
    assert exp.advantages[0, 3] == 0  # padding stays zero


@pytest.mark.parametrize("estimator", ["gae", "grpo", "dr_grpo", "rloo", "reinforce_pp",
                                       "reinforce_pp_baseline"])
def test_every_estimator_fills_a_step_and_keeps_padding_zero(estimator):
    exp = compute_step_advantages(_experience([1.0, 0.0], groups=[7, 7]), estimator=estimator,
                                  kl_estimator="k1", kl_coef=0.1, gamma=1.0, lam=1.0,
                                  whiten=False)
    assert exp.advantages.shape == exp.returns.shape == exp.rewards.shape == (2, 4)
    assert exp.advantages[0, 3] == 0 and exp.advantages[1, 2:].abs().sum() == 0
    assert exp.advantages[0, 0] > exp.advantages[1, 0]  # the better-scored answer leads


def test_group_estimators_need_each_samples_prompt():
    exp = _experience([1.0, 0.0])
    exp.meta = [{} for _ in exp.meta]  # samples that do not say which prompt they answer
    with pytest.raises(KeyError, match="group"):
        compute_step_advantages(exp, estimator="rloo", kl_estimator="k1", kl_coef=0.0,
                                gamma=1.0, lam=1.0, whiten=False)


def test_response_mask_keeps_tokens_through_the_first_eos():
    ids = torch.tensor([[5, 6, 2, 0, 0], [5, 5, 5, 5, 5], [2, 0, 0, 0, 0]])
    assert response_mask(ids, eos_token_id=2).tolist() == [
        [1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_sequence_inputs_count_positions_over_real_tokens_like_generate():
    exp = Experience(prompt_ids=torch.tensor([[0, 0, 4, 5], [3, 4, 5, 6]]),
                     prompt_mask=torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]),
                     response_ids=torch.tensor([[7, 2], [7, 8]]),
                     response_mask=torch.tensor([[1, 1], [1, 1]]))
    inputs = sequence_inputs(exp)
    assert inputs["position_ids"].tolist() == [[0, 0, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5]]
    assert inputs["input_ids"].shape == (2, 6)


def test_resource_plan_adds_roles_and_fails_with_the_numbers():
    roles = [Role("policy_trainer", 2, 1, 1), Role("critic_trainer", 2, 1, 1,
                                                   colocated_with="policy_trainer"),
             Role("rollout", 2, 0.5, 1), Role("reward_scorer", 2, 0.25)]
    assert plan_totals(roles) == {"CPU": 3.5, "GPU": 4}
    assert "on policy_trainer's bundles" in describe_plan(roles)
    check_plan(roles, {"CPU": 4, "GPU": 4})
    with pytest.raises(ResourceError, match=r"needs 4 GPUs \(policy_trainer 2x1, rollout 2x1\) "
                                            r"but the cluster has 0"):
        check_plan(roles, {"CPU": 16})
    with pytest.raises(ResourceError, match="needs 3.5 CPUs"):
        check_plan(roles, {"CPU": 2, "GPU": 8})
    check_plan(roles, {"CPU": 0}, autoscaling=True)  # nodes start on demand


def test_step_metrics_file_and_resume_truncation(tmp_path):
    metrics = StepMetrics(tmp_path / "metrics.jsonl", "run", "ppo", export_to_ray=False)
    for step in (1, 2, 3):
        metrics.log(step, {"reward_mean": 0.1 * step, "reward_mean/Borenia": 0.2})
    metrics.truncate_after(2)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[1]["reward_mean/Borenia"] == 0.2
    assert gauge_name("reward_mean") == "culture_rl_reward_mean"
    assert gauge_name("seconds-rollout") == "culture_rl_seconds_rollout"
