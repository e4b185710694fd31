"""The DPO stage's parts: pair files (user's, reflection's, CultureSPA's) read and checked, the
``dpo:`` config's one-line errors, and our losses as TRL's DPOTrainer computes them (cDPO
from TRL's own loss terms; the dense CPU head gives TRL's numbers)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from culture_rl.config import load_config
from culture_rl.core.errors import ConfigError, DataError
from culture_rl.data.preference_pairs import read_pairs, read_spa_pairs, spa_pairs


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
                    "utf-8")
    return path


PAIR = {"prompt": "As a person from A, name words for 'rain'.", "chosen": " umbrella wet",
        "rejected": " sun dry", "culture": "A"}


def test_pairs_file_keeps_the_three_fields_in_order(tmp_path):
    other = {**PAIR, "chosen": " cloud", "gain": 0.2}
    silent = {**PAIR, "rejected": ""}  # the model answered nothing: a pair still
    pairs = read_pairs(write_jsonl(tmp_path / "p.jsonl", [PAIR, "", other, silent]))
    assert pairs == [{k: row[k] for k in ("prompt", "chosen", "rejected")}
                     for row in (PAIR, other, silent)]


@pytest.mark.parametrize("bad, message", [
    ({"prompt": "p", "chosen": "a"}, "field 'rejected' is missing"),
    ({"prompt": "p", "chosen": 3, "rejected": "b"}, "field 'chosen' is a int, not a string"),
    ({"prompt": "  ", "chosen": "a", "rejected": "b"}, "field 'prompt' is blank"),
    ({"prompt": "p", "chosen": " ", "rejected": "b"}, "field 'chosen' is blank"),
    ({"prompt": "p", "chosen": " a", "rejected": "a "}, "chosen and rejected are the same"),
    ("{not json", "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
])
def test_a_bad_pair_is_named_by_file_and_line(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "p.jsonl", [PAIR, bad])
    with pytest.raises(DataError, match=message) as err:
        read_pairs(path)
    assert str(err.value).startswith(f"{path}, line 2: ")


def instance(aware, unaware, culture="A"):
    return {"question": "Is work important?", "options": ["yes", "no", "unsure"],
            "topic": "work", "culture": culture, "answer": aware.index(max(aware)),
            "aware": aware, "unaware": unaware, "js": 0.3}


def test_spa_pairs_prefer_the_culture_aware_answer_under_the_culture_named_prompt():
    from culture_rl.data import prompts

    moved = instance([0.1, 0.7, 0.2], [0.6, 0.3, 0.1])
    same_option = instance([0.5, 0.4, 0.1], [0.9, 0.05, 0.05])  # related by distance only
    (pair,) = spa_pairs([moved, same_option])
    assert pair["chosen"] == " 2" and pair["rejected"] == " 1"
    assert pair["prompt"] == (prompts.culture_preamble("A")
                              + prompts.survey_prompt(moved["question"], moved["options"]))


def test_spa_instances_file_with_a_broken_row_is_named(tmp_path):
    good = instance([0.1, 0.7, 0.2], [0.6, 0.3, 0.1])
    path = write_jsonl(tmp_path / "data.jsonl", [good, {**good, "unaware": [0.5, 0.5]}])
    with pytest.raises(DataError, match="line 2: options, aware and unaware"):
        read_spa_pairs(path)
    path = write_jsonl(tmp_path / "data.jsonl", [good, {"question": "q"}])
    with pytest.raises(DataError, match="line 2: not a CultureSPA instance: no field 'options'"):
        read_spa_pairs(path)
    assert len(read_spa_pairs(write_jsonl(tmp_path / "ok.jsonl", [good]))) == 1


@pytest.mark.parametrize("overrides, field", [
    (["dpo.pairs=file"], "dpo.pairs_path"),
    (["dpo.loss=cdpo"], "dpo.label_smoothing"),
    (["dpo.loss=ipo", "dpo.label_smoothing=0.1"], "dpo.label_smoothing"),
    (["dpo.label_smoothing=0.5", "dpo.loss=robust"], "dpo.label_smoothing"),
    (["dpo.loss=kto"], "dpo.loss"),
])
def test_impossible_dpo_settings_are_one_line_config_errors(overrides, field):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert err.value.field == field, str(err.value)
    assert "\n" not in str(err.value)


def test_missing_pairs_file_names_the_command_that_makes_it(tmp_path):
    from culture_rl.methods.dpo import load_pairs

    config = load_config(None, [f"run.storage_path={tmp_path}", "run.name=r"])
    with pytest.raises(ConfigError, match=r"reflect/pairs.jsonl \(run `culture-rl reflect`"):
        load_pairs(config)
    empty = write_jsonl(tmp_path / "p.jsonl", [instance([0.5, 0.4, 0.1], [0.9, 0.05, 0.05])])
    config = load_config(None, [f"run.storage_path={tmp_path}", "dpo.pairs=spa",
                                f"dpo.pairs_path={empty}"])
    with pytest.raises(DataError, match="no pair prefers"):
        load_pairs(config)


# ------------------------------------------------------------- the losses, as TRL computes them

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from culture_rl.config import ModelConfig, TinyModelConfig
    from culture_rl.models.loading import build_tiny_model

    folder = tmp_path_factory.mktemp("dpo_tiny")
    words = [f"w{i}" for i in range(40)]
    corpus = [f"cue {w}: answer {w} {w} end" for w in words] * 3
    shape = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                            vocab_size=300)
    return str(build_tiny_model(ModelConfig(tiny=shape), corpus, folder / "tiny", 0)), folder


def dpo_trainer(tiny, loss: str, label_smoothing: float, beta: float = 0.5):
    """TRL's DPOTrainer with our settings on one pair, its LoRA B weights drawn at random so
    the policy differs from the reference (the adapter off) and the margin is not zero."""
    from datasets import Dataset
    from trl import DPOTrainer

    from culture_rl.config import DeepSpeedConfig, LoraConfig, TrainConfig
    from culture_rl.models.loading import load_model, load_tokenizer, peft_lora_config
    from culture_rl.train.sft import PreferenceSettings, TrainJob, dpo_args

    path, folder = tiny
    rows = [{"prompt": "cue w3:", "chosen": " answer w3 w3 end", "rejected": " answer w9 end"}]
    lora = LoraConfig(target_modules=["all-linear"], dropout=0.0)
    job = TrainJob(stage="check", stage_dir=str(folder / "stage"), model_path=path,
                   train=TrainConfig(max_steps=1, micro_batch_size=1, eval_each_epoch=False),
                   deepspeed=DeepSpeedConfig(zero_stage=0), lora=lora, train_rows=rows,
                   preference=PreferenceSettings(loss, beta, label_smoothing))
    args = dpo_args(job, 1, False, str(folder / "scratch"), use_deepspeed=False)
    trainer = DPOTrainer(model=load_model(path), args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=load_tokenizer(path), peft_config=peft_lora_config(lora))
    torch.manual_seed(1)
    for name, weight in trainer.model.named_parameters():
        if "lora_B" in name:
            weight.data.normal_(0, 0.5)
    trainer.model.train()
    return trainer


def loss_and_margin(trainer) -> tuple[float, float]:
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        loss = float(trainer.compute_loss(trainer.model, batch))
    return loss, trainer._metrics["train"]["rewards/margins"][-1]  # beta x margin, one pair


@pytest.mark.parametrize("loss, epsilon", [("dpo", 0.0), ("cdpo", 0.1), ("cdpo", 0.3),
                                           ("robust", 0.2), ("ipo", 0.0)])
def test_our_losses_are_what_trl_computes(tiny, loss, epsilon):
    value, x = loss_and_margin(dpo_trainer(tiny, loss, epsilon))
    assert abs(x) > 0.01, "the adapter did not move the policy off its reference"
    log_sigmoid = torch.nn.functional.logsigmoid
    t = torch.tensor(x, dtype=torch.float64)
    expected = {
        "dpo": -log_sigmoid(t),
        # Mitchell's conservative DPO, by its definition.
        "cdpo": -(1 - epsilon) * log_sigmoid(t) - epsilon * log_sigmoid(-t),
        "robust": (-(1 - epsilon) * log_sigmoid(t) + epsilon * log_sigmoid(-t))
        / (1 - 2 * epsilon),
    }
    if loss == "ipo":  # squared, length-normalised: positive and not the sigmoid loss
        assert value > 0 and not math.isclose(value, float(-log_sigmoid(t)), rel_tol=1e-3)
        return
    # float32 logits in TRL against float64 here: agreement to ~1e-6 relative.
    assert value == pytest.approx(float(expected[loss]), rel=1e-5, abs=1e-6)


def test_cdpo_settings_reproduce_the_definition_on_any_margin():
    from culture_rl.rl.preference import PREFERENCE_LOSSES, cdpo_loss

    margins = torch.linspace(-6, 6, 25, dtype=torch.float64)
    for epsilon in (0.05, 0.25, 0.45):
        settings = PREFERENCE_LOSSES["cdpo"](epsilon)
        assert settings.loss_type == ["sigmoid", "robust"]
        w_sigmoid, w_robust = settings.loss_weights
        x = margins
        sigmoid = -torch.nn.functional.logsigmoid(x)
        robust = ((1 - epsilon) * sigmoid + epsilon * torch.nn.functional.logsigmoid(-x)) \
            / (1 - 2 * epsilon)
        combined = w_sigmoid * sigmoid + w_robust * robust
        for i in range(len(margins)):
            assert float(combined[i]) == pytest.approx(
                float(cdpo_loss(margins[i:i + 1], 1.0, epsilon)), rel=1e-9, abs=1e-12)


def test_dense_cpu_head_gives_trls_dpo_loss_and_metrics(tiny):
    from culture_rl.train.lm_head import use_dense_lm_head

    trainer = dpo_trainer(tiny, "dpo", 0.0)
    chunked = loss_and_margin(trainer)
    chunked_logits = trainer._metrics["train"]["logits/chosen"][-1]
    assert use_dense_lm_head(trainer)
    dense = loss_and_margin(trainer)
    assert dense == pytest.approx(chunked, rel=1e-5, abs=1e-6)
    assert trainer._metrics["train"]["logits/chosen"][-1] == pytest.approx(chunked_logits,
                                                                           rel=1e-5, abs=1e-6)
