"""The dependency walk of ray_jobs/benchmarks/gpu_bundle.py (no network: a wheel written
here, with the METADATA lines real wheels carry)."""

import zipfile

from ray_jobs.benchmarks.gpu_bundle import DEVICE_HAS, normalise, wheel_requirements

METADATA = """Metadata-Version: 2.1
Name: demo
Version: 1.0
Requires-Dist: click>=7.0
Requires-Dist: async-timeout<6.0,>=4.0; python_version < "3.11"
Requires-Dist: pandas; extra == "train"
Requires-Dist: aiohttp_cors; extra == "default"
Requires-Dist: py-spy>=0.4.0; python_version >= "3.12" and extra == "tune"
Requires-Dist: pywin32; sys_platform == "win32"
"""


def _wheel(tmp_path):
    path = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("demo-1.0.dist-info/METADATA", METADATA)
    return path


def test_markers_are_read_for_the_devices_python_and_the_asked_extras(tmp_path):
    wheel = _wheel(tmp_path)
    names = lambda reqs: sorted(r.name for r in reqs)  # noqa: E731
    assert names(wheel_requirements(wheel, set(), "3.12")) == ["click"]
    assert names(wheel_requirements(wheel, {"train", "tune"}, "3.12")) == [
        "click", "pandas", "py-spy"]
    # Python 3.10 needs the backport; 3.11 gets no py-spy rule for tune (>= 3.12 only).
    assert names(wheel_requirements(wheel, {"tune"}, "3.10")) == ["async-timeout", "click"]


def test_names_compare_as_pep_503_normalises_them():
    assert normalise("typing_extensions") == normalise("Typing.Extensions") == "typing-extensions"
    assert "huggingface-hub" in DEVICE_HAS and normalise("huggingface_hub") in DEVICE_HAS
    assert not {"ray", "deepspeed", "trl", "datasets", "pydantic"} & DEVICE_HAS
