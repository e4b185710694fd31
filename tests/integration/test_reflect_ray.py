"""Self-prompted reflective learning on the session's real local Ray: rollout workers, the
reward scorer pool, the DeepSpeed policy trainer and the weight sync, two rounds end to end,
stopped after the first round's checkpoint and resumed.

The policy is the session quickstart's SFT model, so answers parse and revisions that improve
exist; that the loop raises the reward over more rounds is measured by
configs/reflect_quickstart.yaml (README, CALM section)."""

from __future__ import annotations

import json
import math
import os

import pytest

from culture_rl.config import load_config
from culture_rl.core.errors import CultureRLError
from culture_rl.data.align_data import load_align_data
from culture_rl.methods.calm.reflect import run_reflect

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = ["reflect.prompts_per_round=8", "reflect.answers_per_prompt=2",
         "reflect.revisions_per_answer=2", "reflect.rounds=2", "reflect.eval_cues=2",
         "reflect.micro_batch_size=2", "reflect.learning_rate=2e-4", "rollout.max_new_tokens=24",
         "ppo_resources.placement_timeout_s=60", "ppo_resources.call_timeout_s=300"]
ROUND_KEYS = ("reward_initial", "reward_revised", "improved_share", "eval_reward_initial",
              "eval_reward_revised", "eval_seen_reward_initial", "round_seconds")


def read_rounds(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def test_two_rounds_with_real_actors_resume_after_a_stop_and_log_finite_metrics(
        quickstart_run, tmp_path):
    session, _ = quickstart_run
    config = load_config(os.path.join(REPO, "configs", "reflect_quickstart.yaml"),
                         [f"run.storage_path={tmp_path}", "run.name=reflect",
                          f"reflect.policy_path={session.run_dir / 'sft' / 'export'}",
                          "reflect.fault_injection_round=1", *SMALL])
    data = load_align_data(config)
    with pytest.raises(CultureRLError, match="fault injected after the checkpoint of round 1"):
        run_reflect(config, data)
    folder = config.run_dir / "reflect"
    assert [r["step"] for r in read_rounds(folder / "metrics.jsonl")] == [0, 1]

    result = run_reflect(config, data)  # resumes after round 1
    rounds = read_rounds(folder / "metrics.jsonl")
    assert [r["step"] for r in rounds] == [0, 1, 2]
    for record in rounds[1:]:
        for key in ROUND_KEYS:
            assert math.isfinite(record[key]), (key, record)
        # The round's batch samples the cultures; the held-out set has every one.
        batch = {k.split("/", 1)[1] for k in record if k.startswith("reward_initial/")}
        held_out = {k.split("/", 1)[1] for k in record if k.startswith("eval_reward_initial/")}
        assert batch and batch <= held_out == set(data.norms_by_culture)
        assert 0 <= record["improved_share"] <= 1
    trained = [r for r in rounds[1:] if r["pairs"] > 0]
    assert trained, "no revision improved on its answer in two rounds: nothing was trained"
    for record in trained:
        assert math.isfinite(record["sft_loss"]) and math.isfinite(record["preference_loss"])
        assert record["pairs_trained"] % 2 == 0  # a multiple of micro 2 x 1 rank
        # The generators sampled what the trainer scores: the weights reached them.
        assert record["logprob_gap"] < 1e-3
    assert (result.export_dir / "model" / "config.json").is_file()
    results = json.loads((folder / "results.json").read_text("utf-8"))
    assert [r["step"] for r in results["rounds"]] == [0, 1, 2]
    report = (folder / "report.md").read_text("utf-8")
    assert "| 2 |" in report and "held-out" in report
    samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text("utf-8")
               .splitlines()]
    assert {s["round"] for s in samples} == {1, 2}
    assert all(s["prompt"].startswith("You are a person from ") for s in samples)
    # Every pair trained on, as text, once per round despite the resume: the DPO stage's input.
    pair_rows = [json.loads(line) for line in (folder / "pairs.jsonl").read_text("utf-8")
                 .splitlines()]
    for record in rounds[1:]:
        assert sum(r["round"] == record["step"] for r in pair_rows) == record["pairs"]
    assert all(r["gain"] > 0 and r["prompt"].startswith("You are a person from ")
               for r in pair_rows)
    from culture_rl.methods import dpo

    plan = dpo.plan(config.model_copy(update={"dpo": config.dpo.model_copy(
        update={"pairs": "reflection"})}))
    assert plan.prepared == [{k: r[k] for k in ("prompt", "chosen", "rejected")}
                             for r in pair_rows]

    again = run_reflect(config, data)  # finished: a no-op
    assert again.already_finished and [r["step"] for r in again.rounds] == [0, 1, 2]


# Twice in every suite: its verdict once depended on the machine that trained the CALM export
# (issue 22); each repeat is a fresh reflection run on the session's export (~25 s).
@pytest.mark.repeat(2)
def test_a_calm_policy_reflects_with_its_identity_state_and_exports_a_calm_model(
        quickstart_run, tmp_path):
    """The CALM export as the policy: the generators serve it with its identity state, the
    trainer trains its adapter and modules, the sync reaches the generators, and the export is
    a CALM model again."""
    import torch
    from safetensors.torch import load_file

    from culture_rl.models.calm_policy import load_calm_export

    session, _ = quickstart_run
    start = session.run_dir / "calm" / "export"
    config = load_config(os.path.join(REPO, "configs", "reflect_quickstart.yaml"),
                         [f"run.storage_path={tmp_path}", "run.name=reflect_calm",
                          f"reflect.policy_path={start}", *SMALL, "reflect.rounds=1",
                          "reflect.prompts_per_round=16", "reflect.revisions_per_answer=4",
                          # Revisions cut at the 24-token limit count too: with only those that
                          # finished, seeds 1-3 gave 1, 0 and 2 pairs (a verdict left to the
                          # sampled tokens, so to the machine); with all, 2-8 over 5 seeds.
                          "reflect.require_finished=false"])
    result = run_reflect(config, load_align_data(config))
    (record,) = [r for r in result.rounds if r["step"] == 1]
    assert record["pairs"] > 0, record
    # The trainer scores the answers under the identity the generators computed from the
    # prompt, so the two agree as a plain policy's do (1e-6 measured; 0.186 when the trainer
    # read the identity over prompt and answer, issue 22).
    assert record["logprob_gap"] < 1e-3
    exported = result.export_dir / "model"
    assert (exported / "calm.json").is_file() and not (exported / "check.safetensors").exists()
    model, tokenizer, _ = load_calm_export(exported)  # reloads as a CALM model
    before, after = load_file(str(start / "calm.safetensors")), \
        load_file(str(exported / "calm.safetensors"))
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the modules trained
