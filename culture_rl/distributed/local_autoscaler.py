"""A throwaway autoscaling Ray cluster on this machine, for testing what the cloud configs do.

Ray's fake multi-node provider (``provider: {type: fake_multinode}``) "launches" a worker node by
starting another raylet on this machine with the node type's resources (``GPU: 8`` works without
a GPU: the resources are only logical). The real autoscaler drives it, so placement groups that
need absent node types scale the cluster up, and idle nodes are removed after the idle timeout,
exactly as on AWS, GCP or KubeRay.

Why not ``ray.cluster_utils.AutoscalingCluster``: its ``start()`` and ``shutdown()`` run
``ray stop --force``, which kills every Ray on the machine (other test sessions included), and
the example config it reads is missing from the Ray wheel. This cluster instead

- lives in a private temp dir (so its address file is not ``/tmp/ray/ray_current_cluster``,
  where a plain ``ray.init()`` elsewhere would find and join it) on a free GCS port, and
- stops only its own processes: those whose command line names its temp dir, with all their
  descendants (worker processes rename themselves ``ray::...`` and are found as children).

The autoscaler's metrics port (44217) is fixed in Ray; when another cluster on the machine holds
it, this one's autoscaler logs "Address already in use" and scales all the same.

    with LocalAutoscalingCluster({"gpu_node": {"resources": {"CPU": 4, "GPU": 1},
                                               "node_config": {}, "min_workers": 0,
                                               "max_workers": 2}}) as cluster:
        subprocess.run([...], env=cluster.client_env())   # a driver: ray.init(cluster.address)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HEAD_NODE_TYPE = "ray.head.default"  # the fake provider registers its head under this name


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def fake_multinode_config(worker_node_types: dict, gcs_address: str, head_cpus: int = 1,
                          idle_timeout_minutes: float = 0.1, max_workers: int = 4) -> dict:
    """The whole cluster config ``ray start --autoscaling-config`` reads (the fields ``ray up``
    would otherwise fill in from a provider's defaults.yaml)."""
    node_types = dict(worker_node_types)
    node_types[HEAD_NODE_TYPE] = {"resources": {"CPU": head_cpus}, "node_config": {},
                                  "max_workers": 0}
    return {
        "cluster_name": "culture-rl-fake",
        "max_workers": max_workers,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_minutes,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": gcs_address,        # the provider's default is port 6379
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,     # nothing to SSH into: nodes are local raylets
            "disable_launch_config_check": True,
        },
        "auth": {"ssh_user": "ubuntu"},        # required by the schema, never used
        "available_node_types": node_types,
        "head_node_type": HEAD_NODE_TYPE,
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


class LocalAutoscalingCluster:
    """A head node (``head_cpus`` CPUs, no GPU) plus an autoscaler over ``worker_node_types``."""

    def __init__(self, worker_node_types: dict, head_cpus: int = 1,
                 idle_timeout_minutes: float = 0.1, max_workers: int = 4):
        import ray._private.services as services

        self.port = free_port()
        self.ip = services.get_node_ip_address()
        self.address = f"{self.ip}:{self.port}"
        self.head_cpus = head_cpus
        # Short: Ray puts Unix sockets under it, and socket paths are limited to ~107 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="crl-as-", dir="/tmp")
        self.config = fake_multinode_config(worker_node_types, self.address, head_cpus,
                                            idle_timeout_minutes, max_workers)
        self.config_path = os.path.join(self.temp_dir, "autoscaling.json")

    # ------------------------------------------------------------------ start / stop

    def start(self) -> "LocalAutoscalingCluster":
        with open(self.config_path, "w") as f:
            json.dump(self.config, f)
        ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
        cmd = [ray_cli, "start", "--head", f"--port={self.port}",
               f"--autoscaling-config={self.config_path}", f"--temp-dir={self.temp_dir}",
               f"--num-cpus={self.head_cpus}", "--num-gpus=0", "--include-dashboard=false",
               "--disable-usage-stats"]
        # Poll the cluster every second (default 5 s) so scaling is visible within a test.
        env = dict(self.client_env(), AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_FAKE_CLUSTER="1")
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        if result.returncode:
            self.stop()
            raise RuntimeError(f"ray start failed ({result.returncode}):\n{result.stdout}\n"
                               f"{result.stderr}")
        return self

    def client_env(self) -> dict:
        """Environment for a process that joins this cluster: its address, and token
        authentication on (Ray 2.60 turns it on for a head started where ~/.ray/auth_token
        exists; a client must then send the same token)."""
        env = dict(os.environ, RAY_ADDRESS=self.address)
        from pathlib import Path

        if "RAY_AUTH_MODE" not in env and (Path.home() / ".ray" / "auth_token").exists():
            env["RAY_AUTH_MODE"] = "token"
        return env

    def autoscaler_log(self) -> str:
        """The autoscaler's log (what it launched and removed, and why), for failures."""
        path = os.path.join(self.temp_dir, "session_latest", "logs", "monitor.log")
        try:
            with open(path, errors="replace") as f:
                return f.read()
        except OSError:
            return f"(no {path})"

    def processes(self) -> list:
        """Every live process of this cluster: those whose command line names the temp dir
        (GCS, raylets, autoscaler monitor, agents, log monitor) and all their descendants."""
        import psutil

        roots = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if proc.pid != os.getpid() and \
                        any(self.temp_dir in part for part in proc.info["cmdline"] or ()):
                    roots.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        found = {p.pid: p for p in roots}
        for proc in roots:
            try:
                for child in proc.children(recursive=True):
                    found.setdefault(child.pid, child)
            except psutil.NoSuchProcess:
                continue
        found.pop(os.getpid(), None)
        return list(found.values())

    def stop(self, timeout_s: float = 15.0) -> list:
        """SIGTERM then SIGKILL this cluster's processes only; returns the pids that survived
        (empty when all are gone), then removes the temp dir."""
        import psutil

        procs = self.processes()
        _signal(procs, "terminate")
        _, alive = psutil.wait_procs(procs, timeout=timeout_s / 2)
        _signal(alive, "kill")
        psutil.wait_procs(alive, timeout=timeout_s / 2)
        # Anything started in between (a node launching as we stopped) is caught on a second pass.
        late = self.processes()
        _signal(late, "kill")
        psutil.wait_procs(late, timeout=timeout_s / 2)
        survivors = [p.pid for p in self.processes()]
        if not survivors:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        return survivors

    def __enter__(self) -> "LocalAutoscalingCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_for(predicate, timeout_s: float, interval_s: float = 0.5):
    """Poll ``predicate`` until it returns a truthy value (returned) or the time is up (None)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    return None


def _signal(procs: list, method: str) -> None:
    """``proc.terminate()`` / ``proc.kill()`` on each; a process already gone is fine."""
    import psutil

    for proc in procs:
        try:
            getattr(proc, method)()
        except psutil.NoSuchProcess:
            pass
