"""Shared fixtures: one local Ray for the whole session, one tiny trained quickstart run.

Ray start-up costs ~10 s and a tiny pretrain + SFT a few minutes on 2 cores, so both are made
once per session and reused by every integration and end-to-end test.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory, ray_session):
    """The quickstart config, run once: world, tiny base, LoRA SFT (ZeRO-2), evaluations."""
    from culture_rl.config import load_config
    from culture_rl.methods.quickstart import run_quickstart

    # Every stage resumes or no-ops, so pointing CULTURE_RL_TEST_STORAGE at an earlier
    # session's runs folder reuses its finished run while iterating on one test.
    reuse = os.environ.get("CULTURE_RL_TEST_STORAGE")
    storage = reuse if reuse else tmp_path_factory.mktemp("runs")
    config = load_config(os.path.join(REPO, "configs", "quickstart.yaml"),
                         [f"run.storage_path={storage}", "run.name=session"])
    summary = run_quickstart(config)
    return config, summary


def pytest_collection_modifyitems(config, items):
    """Mark every test that depends on the session's trained models (``make test-stability``
    runs each of them twice in one session: the verdict must not depend on the run)."""
    for item in items:
        if "quickstart_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.trained_model)


def pytest_terminal_summary(terminalreporter):
    """How many generated bad-input cases ran (tests/unit/test_bad_input_property.py)."""
    from tests.support import bad_input_counter

    line = bad_input_counter.summary()
    if line:
        terminalreporter.write_line(line)
