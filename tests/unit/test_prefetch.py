"""The background work behind ppo.overlap_rollout (rl/prefetch.py)."""

import threading

import pytest

from culture_rl.rl.prefetch import Prefetch


def test_work_runs_beside_the_caller_and_its_result_comes_back():
    release = threading.Event()
    job = Prefetch(lambda: (release.wait(5), 42)[1], tag={"step": 3})
    assert not job.done() and not job.wait(timeout=0.05)  # still running: the caller goes on
    release.set()
    assert job.result() == 42 and job.done() and job.tag == {"step": 3}


def test_an_error_in_the_work_is_raised_in_the_callers_thread():
    def fail():
        raise RuntimeError("rollout of step 4 did not finish")

    job = Prefetch(fail)
    assert job.wait(timeout=5)
    with pytest.raises(RuntimeError, match="step 4"):
        job.result()


def test_the_thread_never_holds_the_interpreter_open():
    release = threading.Event()
    job = Prefetch(release.wait)
    try:
        assert job._thread.daemon
    finally:
        release.set()
