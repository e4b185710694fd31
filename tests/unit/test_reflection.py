"""The reflection loop's pure parts (templates, pairing, round statistics), its losses against
hand computations, its config checks and its command's bad-input handling."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from culture_rl.cli import main
from culture_rl.config import load_config
from culture_rl.core.errors import ConfigError
from culture_rl.rl.preference import dpo_loss, reflection_loss, sequence_log_prob, sft_loss
from culture_rl.rl.reflection import (DEFAULT_TEMPLATES, Pair, best_revisions, improvement_pairs,
                                      reflection_prompt, reflection_template, repeat_to_multiple,
                                      revision_prompts, round_statistics)

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "configs" / "reflect_quickstart.yaml")


# ------------------------------------------------------------------ templates and pairs
def test_default_template_repeats_the_prompt_and_names_the_culture():
    template = reflection_template(None, "en")
    text = reflection_prompt(template, "P:", " a, b \n", "Borenia")
    assert text.startswith("P: a, b\n") and text.endswith("\nP:")
    assert text.count("Borenia") == 2
    assert reflection_template("{prompt}{answer}!", "en") == "{prompt}{answer}!"
    for language, built_in in DEFAULT_TEMPLATES.items():
        assert all(key in built_in for key in ("{prompt}", "{answer}", "{culture}")), language


def test_revision_prompts_reflect_on_each_answer_or_resample_the_prompt():
    template = "{prompt}{answer} as {culture}? {prompt}"
    rows = revision_prompts(["P1:", "P2:"], [" a", " b", " c", " d"], ["X", "X", "Y", "Y"], 2,
                            template, "reflection")
    assert rows == ["P1: a as X? P1:", "P1: b as X? P1:", "P2: c as Y? P2:", "P2: d as Y? P2:"]
    assert revision_prompts(["P1:", "P2:"], [" a", " b", " c", " d"], ["X"] * 4, 2, template,
                            "resampling") == ["P1:", "P1:", "P2:", "P2:"]


def test_best_revisions_picks_each_answers_best_and_the_first_on_ties():
    # 2 answers x 3 revisions: rows 0-2 revise answer 0, rows 3-5 answer 1.
    best = best_revisions([0.2, 0.9], [0.1, 0.6, 0.6, 0.3, 0.0, 0.2], 3)
    assert best == [(1, 0.6), (3, 0.3)]
    with pytest.raises(ValueError, match="5 revision rewards for 2 answers x 3"):
        best_revisions([0.2, 0.9], [0.0] * 5, 3)


def test_improvement_pairs_need_a_gain_above_the_margin_and_a_finished_revision():
    initial = [0.2, 0.9, 0.4]
    best = [(1, 0.6), (3, 0.3), (5, 0.5)]
    assert improvement_pairs(initial, best) == [Pair(0, 1, pytest.approx(0.4)),
                                                Pair(2, 5, pytest.approx(0.1))]
    assert [p.initial for p in improvement_pairs(initial, best, min_improvement=0.2)] == [0]
    finished = [True, True, True, True, True, False]  # revision 5 hit the token limit
    assert [p.initial for p in improvement_pairs(initial, best, 0.0, finished)] == [0]


@pytest.mark.parametrize("count, multiple, expected", [(0, 4, 0), (3, 4, 4), (4, 4, 4),
                                                       (5, 4, 8), (5, 1, 5)])
def test_repeat_to_multiple(count, multiple, expected):
    items = list(range(count))
    repeated = repeat_to_multiple(items, multiple)
    assert len(repeated) == expected
    assert repeated[:count] == items and set(repeated) == set(items)


def test_round_statistics_by_culture():
    initial = [0.2, 0.4, 1.0, 0.0]
    best = [(0, 0.6), (1, 0.4), (2, 0.8), (3, 0.2)]
    metas = [{"culture": "A"}, {"culture": "A"}, {"culture": "B"}, {"culture": "B"}]
    stats = round_statistics(initial, best, metas)
    assert stats["reward_initial"] == pytest.approx(0.4)
    assert stats["reward_revised"] == pytest.approx(0.5)
    assert stats["improved_share"] == pytest.approx(0.5)  # answers 0 and 3
    assert stats["reward_initial/A"] == pytest.approx(0.3)
    assert stats["reward_revised/B"] == pytest.approx(0.5)
    assert stats["improved_share/A"] == pytest.approx(0.5)
    assert stats["improved_share/B"] == pytest.approx(0.5)


# ------------------------------------------------------------------ losses
def test_sequence_log_prob_and_sft_loss_count_only_response_tokens():
    log_probs = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -9.0, -9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert sequence_log_prob(log_probs, mask).tolist() == [-3.0, -0.5]
    assert float(sft_loss(log_probs, mask)) == pytest.approx(3.5 / 3)


def test_dpo_loss_by_hand():
    out = dpo_loss(torch.tensor([-3.0, -1.0]), torch.tensor([-2.0, -4.0]),
                   torch.tensor([-3.5, -1.0]), torch.tensor([-2.0, -3.0]), beta=0.5)
    # margins: 0.5*((0.5) - 0) = 0.25 and 0.5*((0) - (-1)) = 0.5
    expected = -(math.log(1 / (1 + math.exp(-0.25))) + math.log(1 / (1 + math.exp(-0.5)))) / 2
    assert float(out["loss"]) == pytest.approx(expected)
    assert float(out["margin"]) == pytest.approx(0.375)
    assert float(out["accuracy"]) == 1.0


def test_reflection_loss_weights_its_terms_and_its_gradient_prefers_the_revision():
    chosen = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    rejected = torch.tensor([[-1.5, -0.5]], requires_grad=True)
    mask = torch.ones(1, 2)
    reference = torch.tensor([[-1.0, -1.0]])
    only_sft = reflection_loss(chosen, mask, rejected, mask, reference, reference,
                               sft_coef=1.0, preference_coef=0.0, beta=0.1)
    assert float(only_sft["loss"].detach()) == pytest.approx(1.5)
    both = reflection_loss(chosen, mask, rejected, mask, reference, reference,
                           sft_coef=2.0, preference_coef=3.0, beta=0.1)
    assert float(both["loss"].detach()) == pytest.approx(2 * 1.5 + 3 * float(both["preference_loss"]))
    both["loss"].backward()
    # Lowering the loss raises the revision's log-probs and lowers the initial answer's.
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()


# ------------------------------------------------------------------ config and command
@pytest.mark.parametrize("override, words", [
    ("reflect.template='{prompt} revise'", "{answer}"),
    ("reflect.template='{prompt}{answer}{mood}'", "other than"),
    ("reflect.sft_coef=0", "both 0"),
])
def test_bad_reflect_settings_name_the_field(override, words):
    if "sft_coef" in override:
        override = [override, "reflect.preference_coef=0"]
    else:
        override = [override]
    with pytest.raises(ConfigError) as error:
        load_config(QUICKSTART, override)
    message = str(error.value)
    assert "reflect." in message and words in message and "\n" not in message


@pytest.mark.parametrize("override, field", [("reflect.cultures=[Atlantis]", "reflect.cultures"),
                                             ("reflect.reward=closeness", "reflect.reward"),
                                             ("reflect.task=poetry", "reflect.task"),
                                             ("reflect.policy_path=calm", "no finished CALM")])
def test_reflect_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, override,
                                                                  field):
    code = main(["reflect", "--config", QUICKSTART, f"run.storage_path={tmp_path}/runs",
                 override])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and field in err, err
    assert not (tmp_path / "runs").exists()


def test_task_prompts_name_the_culture_and_carry_what_the_reward_needs():
    from culture_rl.rl.rewards import score_batch
    from culture_rl.data.align_data import load_align_data
    from culture_rl.methods.calm.reflect import build_job, reward_of, seen_prompts

    for task in ("associations", "ranking"):
        config = load_config(QUICKSTART, [f"reflect.task={task}", "reflect.eval_cues=2"])
        data = load_align_data(config, write_world=False)
        job = build_job(config, data, "unused")
        cultures = {p["culture"] for p in job.prompts}
        assert cultures == set(data.norms_by_culture)
        assert all(p["prompt"].startswith(f"You are a person from {p['culture']}.")
                   for p in job.prompts + job.eval_prompts)
        assert not {p["cue"] for p in job.prompts} & {p["cue"] for p in job.eval_prompts}
        assert len(job.eval_prompts) == 2 * len(cultures)
        assert len(seen_prompts(config, job)) == 2 * len(cultures)
        # A perfect answer earns the top reward: the metadata is the one the reward reads.
        prompt = job.prompts[0]
        perfect = (", ".join(prompt["human"][:5]) if task == "associations" else
                   "Final Ranking:\n" + "\n".join(f"{i + 1}: {w}"
                                                  for i, w in enumerate(prompt["human_order"])))
        assert score_batch(reward_of(config), [perfect], [prompt]) == [1.0]


def test_a_world_written_before_a_new_world_option_still_matches():
    from culture_rl.config import WorldConfig
    from culture_rl.data.align_data import same_world_settings

    world = WorldConfig()
    written = world.model_dump()
    assert same_world_settings(written, world)
    older = dict(written)
    older.pop(next(iter(older)))  # written before that option existed: its default applies
    assert same_world_settings(older, world)
    changed = {**written, "seed": written["seed"] + 1}
    assert not same_world_settings(changed, world)
    assert not same_world_settings({**written, "retired_option": 1}, world)
