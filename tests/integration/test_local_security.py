"""A local Ray started by culture-rl binds its dashboard to loopback only (run in its own
process: the session's shared Ray is started by the test fixture, not by culture-rl)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

PROBE = """
from culture_rl.distributed.cluster import connect
import ray
context = connect()
print("DASHBOARD", context.dashboard_url)
ray.shutdown()
"""


def test_local_ray_dashboard_listens_on_loopback_only():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    url = next(line.split(" ", 1)[1] for line in proc.stdout.splitlines()
               if line.startswith("DASHBOARD"))
    assert url.startswith("127.0.0.1:"), url
