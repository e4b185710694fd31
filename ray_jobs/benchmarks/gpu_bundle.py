"""Build ``.gpu/``: the Python packages the GPU benchmarks need on the lent ``device`` machine
that its image lacks, small enough to travel with the working tree (64 MiB in all).

    python -m ray_jobs.benchmarks.gpu_bundle            # here, with network (PyPI)
    # then, on the device machine (the `device` tool's run, carry [".gpu"]):
    bash ray_jobs/benchmarks/gpu_check.sh

Why this exists: the device image has torch, transformers, peft and accelerate, but not Ray,
DeepSpeed, TRL, datasets or pydantic, and nothing can be fetched there. Ray's wheel alone is
79 MB, above the carry limit, so it travels as a tarball of its wheel without the Java jars
and RLlib (about 32 MB with xz). Everything else goes as wheels for CPython 3.12 on
manylinux x86-64 (the device's Python), pinned to the versions installed in this project's
``.venv`` where there is one, so the device runs what CI tests.

The dependency walk is ours because pip's would fetch torch and CUDA libraries again (TRL
needs accelerate, which needs torch): starting from :data:`ROOTS`, each wheel's
``Requires-Dist`` (markers evaluated for Python 3.12 on Linux) is followed unless the device
image already has the package (:data:`DEVICE_HAS`, from the device tool's KINDS.md).
"""

from __future__ import annotations

import argparse
import email.parser
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / ".gpu"
CARRY_LIMIT = 64 * 2**20
TREE_ALLOWANCE = 8 * 2**20  # the working tree itself travels in the same 64 MiB

# What the GPU benchmarks import, with the extras our pyproject asks of Ray (minus the
# dashboard's "default" extra: the benchmarks start Ray without a dashboard).
# transformers, peft, accelerate and tokenizers are the image's own (transformers 5.17 there).
ROOTS = ["ray[train,tune]", "deepspeed", "trl", "datasets", "pydantic"]
# Ray parts no benchmark uses, left out of its tarball to fit the carry limit.
RAY_LEFT_OUT = ("ray/jars", "ray/rllib")

# The device image's Python packages ("cuda" image, read 2026-11-17; the device tool's
# KINDS.md, "Python packages already there"), normalised as in PEP 503.
DEVICE_HAS = set("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn
einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec
gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio
iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13
nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt
xarray xxhash yarl zipp
""".split())

PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_31_x86_64", "manylinux_2_34_x86_64", "manylinux_2_35_x86_64"]
DEVICE_PYTHON = "3.12"  # the device image's python3 (3.12.3)


def marker_env(python: str) -> dict[str, str]:
    return {"python_version": python, "python_full_version": f"{python}.0", "os_name": "posix",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "platform_release": "", "platform_version": "", "implementation_version": python}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def local_version(name: str) -> str | None:
    """The version installed beside this script (the project's .venv), if any."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def wheel_requirements(wheel: Path, extras: set[str], python: str) -> list:
    """The wheel's ``Requires-Dist`` that apply on the device for ``extras``."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        headers = email.parser.Parser().parsestr(archive.read(meta).decode("utf-8"))
    wanted = []
    for line in headers.get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        if requirement.marker is None or any(
                requirement.marker.evaluate({**marker_env(python), "extra": extra})
                for extra in (extras or {""})):
            wanted.append(requirement)
    return wanted


def fetch(spec: str, into: Path, python: str) -> Path:
    """One wheel for the device: a binary for CPython ``python`` from PyPI, else (sdist only,
    e.g. DeepSpeed, pure Python) a wheel built here without its dependencies."""
    before = set(into.glob("*.whl"))
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    download = [sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                "--only-binary=:all:", "--python-version", python, "--implementation", "cp",
                *platforms, "-d", str(into), spec]
    if subprocess.run(download, capture_output=True, text=True).returncode != 0:
        build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                 "--no-build-isolation", "-w", str(into), spec]
        result = subprocess.run(build, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"gpu_bundle: no wheel for {spec}: "
                             f"{result.stderr.strip().splitlines()[-1:]}")
    new = set(into.glob("*.whl")) - before
    if len(new) != 1:
        raise SystemExit(f"gpu_bundle: expected one new wheel for {spec}, got {sorted(new)}")
    return new.pop()


def slim_ray(wheel: Path, into: Path) -> Path:
    """Ray's wheel unpacked without :data:`RAY_LEFT_OUT`, as an xz tarball to untar into the
    device's site folder (a wheel install would only copy the same files)."""
    target = into / (wheel.name.removesuffix(".whl") + "-slim.tar.xz")
    with tempfile.TemporaryDirectory() as scratch:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(scratch)
            # zipfile drops the executable bits that raylet and gcs_server need.
            for info in archive.infolist():
                mode = info.external_attr >> 16
                if mode:
                    (Path(scratch) / info.filename).chmod(mode & 0o7777)
        for part in RAY_LEFT_OUT:
            shutil.rmtree(Path(scratch) / part, ignore_errors=True)
        with tarfile.open(target, "w:xz", preset=6) as tar:
            for entry in sorted(Path(scratch).iterdir()):
                tar.add(entry, arcname=entry.name)
    wheel.unlink()
    return target


def build(out: Path, python: str = DEVICE_PYTHON) -> list[str]:
    from packaging.requirements import Requirement

    wheels = out / "wheels"
    if out.exists():
        shutil.rmtree(out)
    wheels.mkdir(parents=True)
    queue = [Requirement(spec) for spec in ROOTS]
    done: dict[str, str] = {}
    while queue:
        requirement = queue.pop(0)
        name = normalise(requirement.name)
        if name in DEVICE_HAS or name in done:
            continue
        version = local_version(requirement.name)
        if version is not None and not requirement.specifier.contains(version,
                                                                      prereleases=True):
            version = None
        spec = f"{requirement.name}=={version}" if version else str(requirement)
        print(f"[gpu_bundle] {spec}", flush=True)
        wheel = fetch(spec, wheels, python)
        done[name] = wheel.name
        queue += wheel_requirements(wheel, set(requirement.extras), python)
        if name == "ray":
            done[name] = slim_ray(wheel, out).name
    return sorted(done.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(BUNDLE), help="bundle folder (git-ignored)")
    parser.add_argument("--python", default=DEVICE_PYTHON,
                        help="CPython version the wheels are for (another one rehearses the "
                        "device run on this machine: gpu_check.sh with PY=that python)")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", args.python):
        parser.error(f"--python: expected a version like 3.12, not {args.python!r}")
    out = Path(args.out)
    files = build(out, args.python)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    (out / "MANIFEST.txt").write_text("\n".join(files) + "\n", "utf-8")
    print(f"[gpu_bundle] {len(files)} packages, {size / 2**20:.1f} MiB in {out}")
    if size > CARRY_LIMIT - TREE_ALLOWANCE:
        print(f"gpu_bundle: {size / 2**20:.1f} MiB leaves too little of the "
              f"{CARRY_LIMIT / 2**20:.0f} MiB carry limit for the working tree",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
