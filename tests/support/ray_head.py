"""A real Ray head for tests, started the way a user starts one (`ray start --head`), on
loopback and free ports, with Ray 2.60's default token authentication.

It runs in its own process session so that stopping it kills exactly its processes: `ray stop`
would kill every Ray on the machine, the test session's own Ray included.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def client_env(extra: dict | None = None) -> dict:
    """Environment of a Ray client of the head: token auth on (2.60 writes ~/.ray/auth_token at
    `ray start --head`; clients must be told to send it), our venv first on PATH."""
    env = {**os.environ, "RAY_AUTH_MODE": "token",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    env.update(extra or {})
    return env


def auth_token() -> str:
    return (Path.home() / ".ray" / "auth_token").read_text("utf-8").strip()


@dataclass
class RayHead:
    num_cpus: int = 2
    metrics_export_port: int | None = None
    gcs_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    temp_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="rh", dir="/tmp"))
    process: subprocess.Popen | None = None

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def start(self, timeout_s: float = 90) -> "RayHead":
        command = [str(BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
                   "--node-ip-address=127.0.0.1", f"--port={self.gcs_port}",
                   f"--num-cpus={self.num_cpus}", f"--temp-dir={self.temp_dir}",
                   f"--ray-client-server-port={free_port()}",
                   f"--dashboard-agent-listen-port={free_port()}",
                   "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}"]
        if self.metrics_export_port:
            command.append(f"--metrics-export-port={self.metrics_export_port}")
        log = open(Path(self.temp_dir) / "ray_start.log", "w")
        # Unset RAY_AUTH_MODE: the head decides as 2.60 does by default (token auth on).
        env = {k: v for k, v in client_env().items() if k != "RAY_AUTH_MODE"}
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited: {self.log_tail()}")
            if self._ready():
                return self
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"Ray head not ready in {timeout_s} s: {self.log_tail()}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.dashboard_url}/api/authentication_mode",
                                        timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def log_tail(self) -> str:
        path = Path(self.temp_dir) / "ray_start.log"
        return path.read_text("utf-8", "replace")[-3000:] if path.is_file() else ""

    def stop(self) -> None:
        """SIGTERM the head's process group, then SIGKILL what is left (gcs_server and raylet
        ignore SIGTERM while they have work). Job drivers run in sessions of their own, so they
        are found by the cluster address Ray gave them."""
        if self.process is None:
            return
        _kill_job_drivers(self.gcs_address)
        group = os.getpgid(self.process.pid) if self.process.poll() is None else self.process.pid
        for sig, wait_s in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            deadline = time.time() + wait_s
            while time.time() < deadline and _group_alive(group):
                time.sleep(0.2)
        self.process.wait(timeout=10)
        self.process = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False


def _kill_job_drivers(gcs_address: str) -> None:
    import psutil

    for proc in psutil.process_iter():
        try:
            if proc.environ().get("RAY_ADDRESS", "").endswith(":" + gcs_address.rsplit(":", 1)[1]):
                proc.kill()
        except (psutil.Error, OSError):
            continue
