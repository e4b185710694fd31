"""The PPO loop on the session's real local Ray: actor groups on placement groups, real
DeepSpeed in the trainer, weight sync into the generators, scorer loss, fail-fast plans, resume.

The policy is an untrained tiny Llama (built in a second): these tests are about the machinery;
that PPO *learns* is shown by the quickstart (held-out rho of PPO above SFT).
"""

from __future__ import annotations

import json
import time

import pytest
import ray

from culture_rl.config import load_config
from culture_rl.distributed.metrics import StepMetrics
from culture_rl.core.errors import ResourceError
from culture_rl.rl.controller import PPOController
from culture_rl.rl.runtime import PPORunError, latest_checkpoint
from culture_rl.data.align_data import load_align_data
from culture_rl.methods.align.ppo import build_ppo_job

pytestmark = pytest.mark.integration

SMALL = ["world.num_cues=20", "world.num_topics=2", "world.participants_per_cue=30",
         "ppo.prompt_split=train", "ppo.ranking_words=4", "ppo.rollout_batch_size=4",
         "ppo.samples_per_prompt=2", "ppo.mini_batch_size=4", "ppo.micro_batch_size=4",
         "ppo.actor_learning_rate=1e-3", "ppo.critic_learning_rate=1e-3", "ppo.max_steps=2",
         "ppo.save_steps=1", "rollout.max_new_tokens=8", "deepspeed.zero_stage=2",
         "ppo_resources.trainer_workers=1", "ppo_resources.rollout_workers=2",
         "ppo_resources.reward_scorers=2", "ppo_resources.cpus_per_trainer=1",
         "ppo_resources.cpus_per_rollout=0.25", "ppo_resources.cpus_per_scorer=0.25",
         "ppo_resources.colocate=true", "ppo_resources.placement_timeout_s=60",
         "ppo_resources.call_timeout_s=300"]


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    """An untrained tiny Llama + tokenizer trained on a small world's corpus."""
    from culture_rl.models.loading import build_tiny_model

    storage = tmp_path_factory.mktemp("ppo")
    config = load_config(None, [f"run.storage_path={storage}", *SMALL,
                                "model.tiny.hidden_size=32", "model.tiny.num_layers=2",
                                "model.tiny.num_heads=2", "model.tiny.intermediate_size=64",
                                "model.tiny.vocab_size=400"])
    data = load_align_data(config, write_world=False)
    return str(build_tiny_model(config.model, data.corpus, storage / "policy", seed=1))


def ppo_config(tmp_path, tiny_policy, name, extra=()):
    return load_config(None, [f"run.storage_path={tmp_path}", f"run.name={name}",
                              f"ppo.policy_path={tiny_policy}", *SMALL, *extra])


def controller_for(config, tiny_policy):
    data = load_align_data(config)
    return PPOController(config, build_ppo_job(config, data, tiny_policy))


def read_metrics(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def test_ppo_steps_sync_weights_into_generators_and_log_finite_metrics(ray_session, tmp_path,
                                                                       tiny_policy):
    """1 trainer (+ critic) + 2 rollout workers + 2 scorers; after each step the generators
    hold exactly the trainer's (LoRA-merged) weights, which differ from the ones they had."""
    config = ppo_config(tmp_path, tiny_policy, "steps")
    controller = controller_for(config, tiny_policy)
    try:
        controller.start()
        workers = controller.runtime.groups["rollout"].actors
        trainer = controller.runtime.groups["policy"].actors[0]
        before = ray.get(workers[0].fingerprint.remote())
        metrics = StepMetrics(controller.job.stage_dir / "metrics.jsonl", "steps", "ppo")
        last = controller.run(metrics)
        trained = ray.get(trainer.fingerprint.remote())
        after = [ray.get(w.fingerprint.remote()) for w in workers]
    finally:
        controller.shutdown()
    assert set(after[0]) == set(trained)
    for fingerprint in after:
        assert all(fingerprint[k] == pytest.approx(trained[k], rel=1e-6, abs=1e-6)
                   for k in trained)
    changed = [k for k in trained if abs(trained[k] - before[k]) > 1e-6]
    assert changed, "the sync left the generators' weights as they were"
    assert any("q_proj" in k for k in changed)  # LoRA targets reach the generator merged

    rows = read_metrics(controller.job.stage_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("reward_mean", "kl", "entropy", "clip_fraction", "value_loss", "tokens_per_s",
                "seconds_rollout", "seconds_train", "sync_seconds", "logprob_gap"):
        assert all(isinstance(r[key], float) and r[key] == r[key] for r in rows), key
    assert rows[0]["samples"] == 8 and "reward_mean/Borenia" not in rows[0] or True
    assert any(k.startswith("reward_mean/") for k in rows[0])
    # Trainer and generators agree on the sampled tokens' log-probs (temperature 1, top-p 1):
    # the sign that the generators run the trainer's weights.
    assert last["logprob_gap"] < 1e-3
    assert latest_checkpoint(controller.job.checkpoint_dir).name == "step_000002"


def test_killed_rollout_worker_is_replaced_synced_and_the_step_completes(ray_session, tmp_path,
                                                                          tiny_policy):
    """A generator process killed (SIGKILL) after step 1 trained the policy: step 2's rollout
    finds it dead, a replacement starts on its bundle, receives the trained weights and
    generates the lost chunk; the step completes with generators and trainer in agreement.
    Synced by the collective transport (gloo here): its cached group held the dead worker, so
    this also shows a new group replacing it (the other tests use the default transport)."""
    import os
    import signal

    config = ppo_config(tmp_path, tiny_policy, "rollout_loss",
                        extra=["rollout.sync_transport=collective"])
    controller = controller_for(config, tiny_policy)
    try:
        controller.start()
        controller.run_step(1)
        victim = controller.runtime.groups["rollout"].actors[1]
        victim_pid = ray.get(victim.pid.remote())
        os.kill(victim_pid, signal.SIGKILL)
        values = controller.run_step(2)
        replacement = controller.runtime.groups["rollout"].actors[1]
        assert ray.get(replacement.pid.remote()) != victim_pid
        trained = ray.get(controller.runtime.groups["policy"].actors[0].fingerprint.remote())
        synced = ray.get(replacement.fingerprint.remote())
        transport = controller.sync()["transport"]
    finally:
        controller.shutdown()
    assert transport == "collective"
    assert controller.runtime.rollout_replacements == 1
    assert values["samples"] == 8 and values["reward_mean"] == values["reward_mean"]
    assert values["logprob_gap"] < 1e-3  # the replacement generated with the trained weights
    assert all(synced[k] == pytest.approx(trained[k], rel=1e-6, abs=1e-6) for k in trained)


def test_generator_killed_during_an_overlapped_rollout_is_replaced_from_its_thread(
        ray_session, tmp_path, tiny_policy):
    """ppo.overlap_rollout: the kill lands while step 3's rollout runs beside step 2's training.
    The background thread starts the replacement and syncs it once step 2 has trained (the
    trainer calls are not interleaved), the lost chunk is generated again, and step 3 runs on
    that rollout; at the end every generator holds the trainer's weights."""
    import os
    import signal

    config = ppo_config(tmp_path, tiny_policy, "overlap_loss",
                        extra=["ppo.overlap_rollout=true", "ppo.max_steps=3"])
    controller = controller_for(config, tiny_policy)
    try:
        controller.start()
        controller.run_step(1)  # step 2's rollout is made during it, and finished by its end
        victim = controller.runtime.groups["rollout"].actors[1]
        victim_pid = ray.get(victim.pid.remote())
        os.kill(victim_pid, signal.SIGKILL)
        controller.run_step(2)  # uses the finished rollout; step 3's meets the dead worker
        assert controller.runtime.rollout_replacements == 1
        values = controller.run_step(3)
        trained = ray.get(controller.runtime.groups["policy"].actors[0].fingerprint.remote())
        served = [ray.get(w.fingerprint.remote())
                  for w in controller.runtime.groups["rollout"].actors]
    finally:
        controller.shutdown()
    assert values["samples"] == 8 and values["reward_mean"] == values["reward_mean"]
    for fingerprint in served:
        assert all(fingerprint[k] == pytest.approx(trained[k], rel=1e-6, abs=1e-6)
                   for k in trained)


def test_dead_trainer_ends_the_run_with_a_resumable_checkpoint(ray_session, tmp_path,
                                                              tiny_policy):
    """The policy trainer process killed after step 1's checkpoint: step 2 ends with a
    PPORunError that names the checkpoint, and a rerun resumes from it and finishes."""
    import os
    import signal

    config = ppo_config(tmp_path, tiny_policy, "trainer_loss")
    metrics_path = tmp_path / "trainer_loss.jsonl"
    first = controller_for(config, tiny_policy)
    try:
        first.start()
        first.run_step(1)
        first.step = 1
        saved = first.save_checkpoint(1)
        os.kill(ray.get(first.runtime.groups["policy"].actors[0].pid.remote()), signal.SIGKILL)
        with pytest.raises(PPORunError) as failure:
            first.run_step(2)
    finally:
        first.shutdown()
    message = str(failure.value)
    assert "died during" in message and str(saved) in message and "rerun" in message
    second = controller_for(config, tiny_policy)
    try:
        second.start()
        assert second.resumed_from == saved and second.step == 1
        last = second.run(StepMetrics(metrics_path, "trainer_loss", "ppo"))
    finally:
        second.shutdown()
    assert second.step == 2 and last["logprob_gap"] < 1e-3


def test_killed_scorer_mid_step_is_replaced_and_the_step_completes(ray_session, tmp_path,
                                                                     tiny_policy):
    config = ppo_config(tmp_path, tiny_policy, "scorer", ["ppo.max_steps=1"])
    controller = controller_for(config, tiny_policy)
    try:
        controller.start()
        victim = controller.runtime.pool.scorers[0]
        victim_pid = ray.get(victim.pid.remote())
        rollout = controller.rollout

        def rollout_then_kill_scorer(*args):
            out = rollout(*args)  # the step is under way: its rollouts exist
            ray.kill(victim, no_restart=True)
            # ray.kill is asynchronous: wait until the scorer is gone, or the step's first
            # chunk could still reach it alive and nothing would need replacing.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    ray.get(victim.pid.remote(), timeout=5)
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                    break
                time.sleep(0.05)
            return out

        controller.rollout = rollout_then_kill_scorer
        values = controller.run_step(1)
        assert ray.get(controller.runtime.pool.scorers[0].pid.remote()) != victim_pid
        assert controller.runtime.pool.replacements >= 1
        assert values["samples"] == 8 and values["reward_mean"] == values["reward_mean"]
    finally:
        controller.shutdown()


def test_impossible_plan_fails_in_seconds_with_the_numbers(ray_session, tmp_path, tiny_policy):
    config = ppo_config(tmp_path, tiny_policy, "toobig", ["ppo_resources.gpus_per_rollout=1"])
    controller = controller_for(config, tiny_policy)
    with pytest.raises(ResourceError, match=r"needs 2 GPUs \(rollout 2x1\) but the cluster "
                                            r"has 0"):
        controller.start()
    assert not controller.runtime.groups  # nothing was started
    config = ppo_config(tmp_path, tiny_policy, "toobig2", ["ppo_resources.reward_scorers=40"])
    with pytest.raises(ResourceError, match="needs 11.5 CPUs"):
        controller_for(config, tiny_policy).start()


def test_stopped_run_resumes_at_the_next_step(ray_session, tmp_path, tiny_policy):
    extra = ["ppo.max_steps=2", "ppo.fault_injection_step=1"]
    config = ppo_config(tmp_path, tiny_policy, "resume", extra)
    first = controller_for(config, tiny_policy)
    metrics_path = first.job.stage_dir / "metrics.jsonl"
    try:
        first.start()
        with pytest.raises(PPORunError, match="fault injected after the checkpoint of step 1"):
            first.run(StepMetrics(metrics_path, "resume", "ppo"))
        prompts_after_1 = first.iterator.state_dict()
    finally:
        first.shutdown()

    second = controller_for(config, tiny_policy)
    try:
        second.start()
        assert second.resumed_from is not None and second.resumed_from.name == "step_000001"
        assert second.step == 1 and second.iterator.state_dict() == prompts_after_1
        second.run(StepMetrics(metrics_path, "resume", "ppo"))
    finally:
        second.shutdown()
    assert [r["step"] for r in read_metrics(metrics_path)] == [1, 2]
    assert latest_checkpoint(second.job.checkpoint_dir).name == "step_000002"


def test_full_weight_grpo_under_zero3_syncs_gathered_weights(ray_session, tmp_path, tiny_policy):
    """All weights trained (reference = a frozen ZeRO-3 copy), no critic (GRPO), ZeRO-3: the
    sync gathers the shards and the generators still match the trainer exactly."""
    config = ppo_config(tmp_path, tiny_policy, "zero3", [
        "deepspeed.zero_stage=3", "ppo.lora=false", "ppo.advantage_estimator=grpo",
        "ppo.max_steps=1", "ppo.actor_learning_rate=1e-4",
        # An untrained policy never produces a parseable ranking: every score is -1, so every
        # group-relative advantage is 0. The entropy bonus still moves the weights.
        "ppo.entropy_coef=0.01"])
    controller = controller_for(config, tiny_policy)
    try:
        controller.start()
        assert "critic" not in controller.runtime.groups
        before = ray.get(controller.runtime.groups["rollout"].actors[0].fingerprint.remote())
        values = controller.run_step(1)
        trained = ray.get(controller.runtime.groups["policy"].actors[0].fingerprint.remote())
        after = ray.get(controller.runtime.groups["rollout"].actors[1].fingerprint.remote())
        controller.step = 1
        export = controller.export()
    finally:
        controller.shutdown()
    assert all(after[k] == pytest.approx(trained[k], rel=1e-6, abs=1e-6) for k in trained)
    assert sum(abs(trained[k] - before[k]) > 1e-6 for k in trained) > len(trained) // 2
    assert values["logprob_gap"] < 1e-3 and values["kl"] == values["kl"]
    from culture_rl.models.loading import load_model

    exported = load_model(export / "model")
    assert float(exported.model.embed_tokens.weight.double().sum()) == pytest.approx(
        trained["model.embed_tokens.weight"], rel=1e-6)


def test_bf16_step_trains_and_syncs_bf16_weights(ray_session, tmp_path, tiny_policy):
    """The GPU precision on CPU: DeepSpeed in bf16 (fp32 master weights in its optimizer), the
    generators load the model in bf16 and the sync moves bf16 bits (as int16, numpy having no
    bfloat16) into them exactly. What a GPU run of the benchmarks sets (``gpu_overrides``)."""
    config = ppo_config(tmp_path, tiny_policy, "bf16", [
        "model.dtype=bfloat16", "deepspeed.precision=bf16", "ppo.max_steps=1"])
    controller = controller_for(config, tiny_policy)
    try:
        controller.start()
        generator = controller.runtime.groups["rollout"].actors[0]
        before = ray.get(generator.fingerprint.remote())
        values = controller.run_step(1)
        trained = ray.get(controller.runtime.groups["policy"].actors[0].fingerprint.remote())
        after = ray.get(generator.fingerprint.remote())
        dtypes = ray.get(generator.__ray_call__.remote(
            lambda worker: sorted({str(p.dtype) for p in worker.model.parameters()})))
    finally:
        controller.shutdown()
    assert dtypes == ["torch.bfloat16"]
    assert all(after[k] == pytest.approx(trained[k], rel=1e-6, abs=1e-6) for k in trained)
    assert any(abs(trained[k] - before[k]) > 1e-6 for k in trained)
    # bf16 keeps 8 bits of mantissa: trainer and generators agree to about 1e-3, not 1e-6.
    assert values["logprob_gap"] < 2e-2 and values["kl"] == values["kl"]


def test_two_trainer_ranks_share_the_batch_and_stay_in_sync(ray_session, tmp_path, tiny_policy):
    """2 DeepSpeed ranks (gloo) for policy and critic: each gets half of every batch, the
    gradients are all-reduced, and rank 0's sync leaves the generators equal to both ranks."""
    config = ppo_config(tmp_path, tiny_policy, "ranks", [
        "ppo_resources.trainer_workers=2", "ppo_resources.cpus_per_trainer=0.5",
        "ppo.mini_batch_size=8", "ppo.micro_batch_size=2", "ppo.max_steps=1"])
    controller = controller_for(config, tiny_policy)
    try:
        controller.start()
        values = controller.run_step(1)
        ranks = ray.get([a.fingerprint.remote()
                         for a in controller.runtime.groups["policy"].actors])
        generator = ray.get(controller.runtime.groups["rollout"].actors[0].fingerprint.remote())
    finally:
        controller.shutdown()
    assert ranks[0] == ranks[1]  # data-parallel ranks hold identical weights after the step
    assert all(generator[k] == pytest.approx(ranks[0][k], rel=1e-6, abs=1e-6) for k in generator)
    assert values["samples"] == 8 and values["value_loss"] == values["value_loss"]


def test_overlapped_rollout_is_one_step_off_policy_and_resumes_without_losing_a_batch(
        ray_session, tmp_path, tiny_policy):
    """ppo.overlap_rollout: step t+1's rollout is generated while step t trains, so from step 2
    on the generators' log-probs lag the trainer's by one update; the sync still waits for it
    (the generators end on the trainer's weights), and a checkpoint keeps the prompt position
    of the last finished step, not that of the batch in flight."""
    from culture_rl.rl.prompt_iterator import PromptIterator

    extra = ["ppo.overlap_rollout=true", "ppo.max_steps=3", "ppo.fault_injection_step=2",
             "ppo.lora=false", "deepspeed.zero_stage=0"]
    config = ppo_config(tmp_path, tiny_policy, "overlap", extra)
    first = controller_for(config, tiny_policy)
    metrics_path = first.job.stage_dir / "metrics.jsonl"
    try:
        first.start()
        with pytest.raises(PPORunError, match="fault injected after the checkpoint of step 2"):
            first.run(StepMetrics(metrics_path, "overlap", "ppo"))
        assert first.prefetched is not None and first.prefetched.tag["step"] == 3
    finally:
        first.shutdown()
    rows = read_metrics(metrics_path)
    # Step 1 was generated on the spot, step 2 from the weights before step 1's update.
    assert rows[0]["logprob_gap"] < 1e-4 < rows[1]["logprob_gap"]
    assert all(r["seconds_rollout_wait"] >= 0 for r in rows)
    saved = json.loads((latest_checkpoint(first.job.checkpoint_dir) / "controller.json")
                       .read_text("utf-8"))
    expected = PromptIterator(first.job.prompts, config.ppo.rollout_batch_size, config.run.seed)
    expected.next_batch(), expected.next_batch()
    assert saved["step"] == 2 and saved["prompts"] == expected.state_dict()

    second = controller_for(config, tiny_policy)
    try:
        second.start()
        assert second.step == 2 and second.prefetched is None
        second.run(StepMetrics(metrics_path, "overlap", "ppo"))
        trained = ray.get(second.runtime.groups["policy"].actors[0].fingerprint.remote())
        served = [ray.get(w.fingerprint.remote()) for w in second.runtime.groups["rollout"].actors]
    finally:
        second.shutdown()
    assert [r["step"] for r in read_metrics(metrics_path)] == [1, 2, 3]
    for fingerprint in served:
        assert all(fingerprint[k] == pytest.approx(trained[k], rel=1e-6, abs=1e-6)
                   for k in trained)


def test_critic_free_rloo_with_the_sequence_level_gspo_loss_trains_a_step(ray_session, tmp_path,
                                                                          tiny_policy):
    """RLOO starts no critic; GSPO with DAPO's asymmetric clip, overlong punishment and dynamic
    sampling and Dr. GRPO's aggregation runs through the real trainer (the maths:
    tests/unit/test_ppo_math.py, tests/unit/test_dynamic_sampling.py)."""
    with pytest.warns(UserWarning, match="trains no critic"):  # SMALL sets a critic rate
        config = ppo_config(tmp_path, tiny_policy, "rloo", [
            "ppo.advantage_estimator=rloo", "ppo.policy_loss=gspo", "ppo.max_steps=1",
            "ppo.clip_ratio_low=0.0003", "ppo.clip_ratio_high=0.0004",
            "ppo.loss_aggregation=seq_mean_token_sum", "ppo.entropy_coef=0.01",
            "ppo.overlong_buffer=4", "ppo.dynamic_sampling=true",
            "ppo.dynamic_sampling_max_draws=2"])
    controller = controller_for(config, tiny_policy)
    try:
        controller.start()
        assert set(controller.runtime.groups) == {"policy", "rollout"}
        values = controller.run_step(1)
    finally:
        controller.shutdown()
    assert values["policy_loss"] == values["policy_loss"] and values["kl"] == values["kl"]
    assert 0.0 <= values["clip_fraction"] <= 1.0
    # reward_mean has the overlong punishment in it, the per-culture means (one culture here)
    # do not: the punishment only takes, and all of 1 from an answer cut at the 8-token limit.
    (raw,) = [v for k, v in values.items() if k.startswith("reward_mean/")]
    assert values["reward_mean"] <= raw
    if values["response_length_at_limit_share"] == 1.0:
        assert values["reward_mean"] == pytest.approx(raw - 1.0)
    # Short of groups with a spread after the first batch, the step drew a second one.
    assert values["dynamic_sampling_spread_share"] == 1.0 or values["dynamic_sampling_draws"] == 2
    assert values["samples"] == 4 * 2  # still rollout_batch_size x samples_per_prompt
