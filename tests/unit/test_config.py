from pathlib import Path

import pytest

from culture_rl.config import ExperimentConfig, describe_fields, load_config, parse_override
from culture_rl.errors import ConfigError

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
    ("deepspeed.offload_params=true", "deepspeed"),
    ("model.tiny.num_heads=3", "model.tiny"),
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
