"""The DPO stage on real Ray Train + DeepSpeed (2 CPU workers, ZeRO-2), from the session's SFT
model, on pairs written in the user's JSON Lines format: the loss falls, the chosen answers'
log-probability rises against the rejected ones', an interrupted run resumes to the same
losses, and ``culture-rl eval`` picks the export up."""

from __future__ import annotations

import json

import pytest

from culture_rl.config import load_config
from culture_rl.data import prompts
from culture_rl.data.align_data import load_align_data
from culture_rl.eval.harness import resolve_models
from culture_rl.methods import dpo
from culture_rl.train.sft import FINISHED, TrainingError

pytestmark = pytest.mark.integration

STEPS = 6


def culture_pairs(config, data) -> list[dict]:
    """Association prompts of the training cues: the target culture's top words chosen over
    another culture's (a cultural preference the SFT model partly has already)."""
    target = data.norms_by_culture[data.target_culture]
    other = next(c for c in data.norms_by_culture if c != data.target_culture)
    pairs = []
    for cue in data.split["train"]:
        mine = [w for w, _ in target.get(cue, [])][:4]
        theirs = [w for w, _ in data.norms_by_culture[other].get(cue, [])][:4]
        if mine and theirs and mine != theirs:
            pairs.append({"prompt": prompts.association_prompt(cue),
                          "chosen": prompts.association_completion(mine),
                          "rejected": prompts.association_completion(theirs)})
    return pairs


def dpo_config(quickstart_run, tmp_path, name, extra=()):
    session, _ = quickstart_run
    data = load_align_data(session, write_world=False)
    pairs_file = tmp_path / "pairs.jsonl"
    if not pairs_file.exists():
        pairs_file.write_text("".join(json.dumps(p) + "\n" for p in culture_pairs(session, data)),
                              "utf-8")
    return load_config(None, [
        f"run.storage_path={tmp_path}", f"run.name={name}",
        f"model.path={session.run_dir / 'pretrain' / 'export' / 'model'}",
        f"world.num_cues={session.world.num_cues}", f"data.culture={session.data.culture}",
        f"dpo.policy_path={session.run_dir / 'sft' / 'export'}", "dpo.pairs=file",
        f"dpo.pairs_path={pairs_file}", "lora.target_modules=[all-linear]",
        f"dpo.train.max_steps={STEPS}", "dpo.train.save_steps=2", "dpo.train.micro_batch_size=4",
        "dpo.train.lr_scheduler=constant", "dpo.train.learning_rate=2e-3",
        "dpo.train.warmup_ratio=0", "dpo.beta=0.1", *extra])


def records(stage_dir) -> dict[int, dict]:
    lines = (stage_dir / "metrics.jsonl").read_text("utf-8").splitlines()
    return {r["step"]: r for r in map(json.loads, filter(str.strip, lines)) if "loss" in r}


def test_dpo_learns_the_preference_resumes_exactly_and_is_evaluated(quickstart_run, tmp_path):
    straight = dpo_config(quickstart_run, tmp_path, "straight")
    plan = dpo.plan(straight)
    assert len(plan.prepared) >= 16
    result = dpo.run(plan)
    logged = records(straight.run_dir / "dpo")
    assert sorted(logged) == list(range(1, STEPS + 1))
    first, last = logged[1], logged[STEPS]
    # At step 1 the adapter is zero: policy = reference, margin 0, loss log 2.
    assert first["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert abs(first["rewards_margins"]) < 1e-4
    # Trained: the chosen answers gained log-probability against the rejected ones.
    assert last["loss"] < 0.9 * first["loss"], (first, last)
    assert last["rewards_margins"] > 0.05 and last["rewards_accuracies"] > 0.5, last
    assert (result.export_dir / FINISHED).is_file()
    assert (result.export_dir / "model" / "config.json").is_file()  # merged for evaluation
    assert resolve_models(straight)["dpo"] == str((result.export_dir / "model").resolve())

    broken = dpo_config(quickstart_run, tmp_path, "broken", ["dpo.train.fault_injection_step=2"])
    with pytest.raises(TrainingError, match="fault injected after step 2"):
        dpo.run(dpo.plan(broken))
    assert not (broken.run_dir / "dpo" / "export").exists()
    dpo.run(dpo.plan(broken))  # the same run name: resumes from the step-2 checkpoint
    resumed = records(broken.run_dir / "dpo")
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):  # the same pairs in the same order, the same optimizer
        assert resumed[step]["loss"] == pytest.approx(logged[step]["loss"], rel=1e-4,
                                                      abs=1e-5), step
