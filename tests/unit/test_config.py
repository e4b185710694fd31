import warnings
from pathlib import Path

import pytest

from culture_rl.config import (ExperimentConfig, TrainConfig, describe_fields, load_config,
                               parse_override)
from culture_rl.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, "utf-8")
    return path


def test_defaults_validate():
    config = load_config()
    assert config.deepspeed.zero_stage == 2
    assert config.run_dir.name == "quickstart"


def test_extends_and_overrides(tmp_path):
    write(tmp_path, "base.yaml", "sft:\n  learning_rate: 1.0e-4\n  epochs: 2\n")
    child = write(tmp_path, "child.yaml", "extends: base.yaml\nsft:\n  epochs: 5\n")
    config = load_config(child, ["sft.learning_rate=1e-5", "lora.target_modules=[q_proj]"])
    assert config.sft.epochs == 5
    assert config.sft.learning_rate == pytest.approx(1e-5)
    assert config.lora.target_modules == ["q_proj"]


def test_unknown_key_names_file_and_field(tmp_path):
    path = write(tmp_path, "bad.yaml", "sft:\n  learnin_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message and "sft.learnin_rate" in message and "unknown key" in message
    assert "\n" not in message


def test_error_names_the_parent_file_that_set_the_value(tmp_path):
    base = write(tmp_path, "base.yaml", "deepspeed:\n  zero_stage: 7\n")
    child = write(tmp_path, "child.yaml", "extends: base.yaml\nrun:\n  name: x\n")
    with pytest.raises(ConfigError) as err:
        load_config(child)
    assert str(base) in str(err.value) and "deepspeed.zero_stage" in str(err.value)


def test_wrong_type_from_command_line():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["sft.micro_batch_size=lots"])
    assert "command line" in str(err.value) and "sft.micro_batch_size" in str(err.value)


@pytest.mark.parametrize("override,field", [
    ("deepspeed.offload_params=true", "deepspeed.offload_params"),
    ("model.tiny.num_heads=3", "model.tiny.num_heads"),
    ("sft.learning_rate=-1", "sft.learning_rate"),
    ("resources.num_workers=0", "resources.num_workers"),
])
def test_impossible_values(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert field in str(err.value)


def test_bad_yaml_reports_line(tmp_path):
    path = write(tmp_path, "broken.yaml", "sft:\n  epochs: [1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "line" in str(err.value) and str(path) in str(err.value)


def test_missing_file_and_cycle(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    a = write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(a)


def test_override_syntax():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_every_field_has_help():
    lines = describe_fields()
    assert lines and all("# None" not in line and ": None" not in line for line in lines)
    assert any("sft.learning_rate" in line for line in lines)


def _walk(model):
    for name, field in model.model_fields.items():
        yield name, field
        annotation = field.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            yield from _walk(annotation)


def test_every_field_has_a_description():
    missing = [name for name, field in _walk(ExperimentConfig) if not field.description]
    assert missing == []


@pytest.mark.parametrize("text, overrides, field", [
    ("sft:\n  epochs: .inf\n", [], "sft.epochs"),  # passed gt=0: a run that never ends
    ("", ["sft.learning_rate=inf"], "sft.learning_rate"),
    ("", ["ppo.kl_coef=nan"], "ppo.kl_coef"),
    ("sweep:\n  learning_rate: [1.0e-4, .inf]\n", [], "sweep.learning_rate.1"),
])
def test_infinite_or_nan_floats_are_rejected(tmp_path, text, overrides, field):
    path = write(tmp_path, "c.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides)
    assert err.value.field == field and "finite" in str(err.value)


def test_cross_field_error_names_the_field_and_the_file_that_set_it(tmp_path):
    # A model validator's error used to carry only the section ("ppo") and, as its input, the
    # whole section dict; the file named was the top one even for a command-line value.
    path = write(tmp_path, "c.yaml", "ppo:\n  rollout_batch_size: 4\n  samples_per_prompt: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["ppo.mini_batch_size=9"])
    message = str(err.value)
    assert message.startswith("command line: ppo.mini_batch_size: mini_batch_size 9 exceeds")
    assert "(8 = rollout_batch_size 4 x samples_per_prompt 2)" in message and "{" not in message
    heads = write(tmp_path, "h.yaml", "model:\n  tiny:\n    hidden_size: 10\n    num_heads: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(heads)
    assert str(err.value).startswith(f"{heads}: model.tiny.num_heads: hidden_size 10")


def test_duplicate_key_is_an_error_with_its_line(tmp_path):
    # PyYAML keeps the last of two equal keys: the first sft section was dropped silently.
    path = write(tmp_path, "c.yaml",
                 "sft:\n  epochs: 5\nlora:\n  r: 8\nsft:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: line 5: invalid YAML: duplicate key 'sft'"
    merged = write(tmp_path, "m.yaml", "sft:\n  <<: {epochs: 5, learning_rate: 0.1}\n  epochs: 2\n")
    config = load_config(merged)  # a merge key may still be overridden beside it
    assert config.sft.epochs == 2 and config.sft.learning_rate == pytest.approx(0.1)


def test_number_or_nesting_yaml_cannot_hold_is_a_config_error(tmp_path):
    huge = write(tmp_path, "h.yaml", "sft:\n  max_steps: " + "9" * 5000 + "\n")
    with pytest.raises(ConfigError, match="4300 digits") as err:
        load_config(huge)  # int() raised ValueError from inside PyYAML: a traceback
    assert str(huge) in str(err.value)
    deep = write(tmp_path, "d.yaml", "sft: " + "[" * 20000 + "]" * 20000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(deep)  # RecursionError
    with pytest.raises(ConfigError) as err:
        load_config(None, ["sft.max_steps=" + "9" * 5000])  # read as text, then rejected
    assert err.value.field == "sft.max_steps"


def test_culture_may_be_given_by_index(tmp_path):
    # The help says "a culture name or index", but YAML reads 1 as an int, which a str field
    # rejected as a wrong type.
    path = write(tmp_path, "c.yaml", "data:\n  culture: 1\neval:\n  tension_pair: [0, 2]\n")
    config = load_config(path, ["eval.cultures=[0, Borenia]", "sweep.cultures=[2]"])
    assert config.data.culture == "1" and config.eval.tension_pair == ["0", "2"]
    assert config.eval.cultures == ["0", "Borenia"] and config.sweep.cultures == ["2"]
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.culture=true"])  # a bool is still not a culture
    assert err.value.field == "data.culture"


def test_blank_data_path_means_unset(tmp_path):
    # `swow_path: ""` was neither None nor a path: load_align_data fell through to an assert.
    path = write(tmp_path, "c.yaml", "data:\n  swow_path: ''\n  warriner_path: '  '\n")
    config = load_config(path, ['data.statements_path=""'])
    assert config.data.swow_path is None and config.data.warriner_path is None
    assert config.data.statements_path is None


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"])
def test_group_estimators_need_two_samples_a_prompt(estimator):
    with pytest.raises(ConfigError, match=f"ppo.samples_per_prompt.*'{estimator}'"):
        load_config(None, [f"ppo.advantage_estimator={estimator}", "ppo.samples_per_prompt=1"])
    load_config(None, ["ppo.advantage_estimator=reinforce_pp", "ppo.samples_per_prompt=1"])


def test_a_critic_learning_rate_without_a_critic_is_a_warning():
    with pytest.warns(UserWarning, match="trains no critic"):
        load_config(None, ["ppo.advantage_estimator=rloo", "ppo.samples_per_prompt=2",
                           "ppo.mini_batch_size=16", "ppo.critic_learning_rate=1e-5"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(None, ["ppo.advantage_estimator=gae", "ppo.critic_learning_rate=1e-5"])


def test_the_overlong_buffer_must_fit_below_the_generation_limit():
    with pytest.raises(ConfigError, match="ppo.overlong_buffer 16 must be below"):
        load_config(None, ["ppo.overlong_buffer=16", "rollout.max_new_tokens=16"])
    assert load_config(None, ["ppo.overlong_buffer=4", "rollout.max_new_tokens=16"]
                       ).ppo.overlong_buffer == 4


def test_dynamic_sampling_needs_a_group_estimator():
    with pytest.raises(ConfigError, match="ppo.dynamic_sampling.*'gae'"):
        load_config(None, ["ppo.dynamic_sampling=true"])
    load_config(None, ["ppo.dynamic_sampling=true", "ppo.advantage_estimator=grpo",
                       "ppo.samples_per_prompt=2", "ppo.mini_batch_size=16"])


@pytest.mark.parametrize("override, section", [
    ("pretrain.epochs=2", "pretrain"), ("spa.train.max_steps=6", "spa.train"),
    ("dpo.train.max_steps=6", "dpo.train")])
def test_one_override_of_a_section_keeps_its_own_other_defaults(override, section):
    """pretrain, spa.train and dpo.train default to other values than TrainConfig's; setting
    one of their fields must not reset the rest to TrainConfig's (it once did)."""
    def get(config):
        for name in section.split("."):
            config = getattr(config, name)
        return config

    default, changed = get(load_config(None, [])), get(load_config(None, [override]))
    field = override.split("=")[0].split(".")[-1]
    assert getattr(changed, field) != getattr(default, field)
    assert default.learning_rate != TrainConfig().learning_rate  # the section's own default
    assert changed.model_dump(exclude={field}) == default.model_dump(exclude={field})
