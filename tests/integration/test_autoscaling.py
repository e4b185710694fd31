"""Autoscaling from zero GPU nodes, on this machine, with Ray's real autoscaler and its fake
multi-node provider (culture_rl/distributed/local_autoscaler.py): the PPO actor groups of a
small GPU plan (our own ActorGroup on placement groups, as the controller builds them) make
the cluster start GPU nodes; once the groups are shut down the nodes go away after the idle
timeout. The cluster is stopped by its own processes only: a separate Ray started before it
must still answer afterwards.

Everything Ray runs in a subprocess (the driver, the separate Ray), so this test neither
needs nor disturbs the session's own local Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from culture_rl.distributed.local_autoscaler import LocalAutoscalingCluster

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A small PPO plan that uses GPUs: 2 trainer ranks (critic colocated) + 2 generators = 4 GPUs.
PLAN = [os.path.join(REPO, "configs", "align_ppo_quickstart.yaml"),
        "ppo_resources.trainer_workers=2", "ppo_resources.rollout_workers=2",
        "ppo_resources.gpus_per_trainer=1", "ppo_resources.gpus_per_rollout=1",
        "ppo_resources.colocate=true", "ppo_resources.placement_timeout_s=90",
        "resources.autoscaling=true"]

# GPU nodes as on the clouds (min_workers 0), with fake GPUs; small so that a few fit here.
WORKER_TYPES = {"gpu-4x": {"resources": {"CPU": 4, "GPU": 4}, "node_config": {},
                           "min_workers": 0, "max_workers": 2}}

DRIVER = textwrap.dedent(r"""
    import json, os, sys, threading, time
    import ray
    from culture_rl.config import load_config
    from culture_rl.distributed.cluster import ActorGroup, check_plan, describe_plan
    from culture_rl.core.errors import ResourceError
    from culture_rl.rl.plan import ppo_roles

    config = load_config(sys.argv[1], sys.argv[2:])
    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    t0 = time.monotonic()

    def gpu_nodes():
        return sorted(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU"))

    lock = threading.Lock()

    def log(event, **fields):  # one JSON line per event (two threads log)
        line = json.dumps({"t": round(time.monotonic() - t0, 1), "event": event,
                           "gpu_nodes": len(gpu_nodes()), **fields})
        with lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def watch():  # the GPU node count over time, so a failure explains itself
        last = None
        while True:
            count = len(gpu_nodes())
            if count != last:
                log("gpu nodes changed")
                last = count
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()
    roles = {r.name: r for r in ppo_roles(config)}
    print(describe_plan(list(roles.values())), flush=True)
    try:  # a fixed-size cluster with no GPU node yet: the plan is rejected at once ...
        check_plan(list(roles.values()), ray.cluster_resources())
        rejected = False
    except ResourceError:
        rejected = True
    # ... but with resources.autoscaling it waits for the nodes the autoscaler starts
    check_plan(list(roles.values()), ray.cluster_resources(), config.resources.autoscaling)
    log("start", rejected_without_autoscaling=rejected)

    @ray.remote
    class Probe:
        def where(self):
            return ray.get_runtime_context().get_node_id(), ray.get_gpu_ids()

    timeout = config.ppo_resources.placement_timeout_s
    no_args = lambda rank: ((), {})
    t = time.monotonic()
    policy = ActorGroup(roles["policy_trainer"], Probe, no_args, timeout, share=0.5)
    critic = ActorGroup(roles["critic_trainer"], Probe, no_args, timeout, share=0.5,
                        placement_group=policy.placement_group)
    rollout = ActorGroup(roles["rollout"], Probe, no_args, timeout)
    log("placement groups ready", seconds=round(time.monotonic() - t, 1))
    groups = {"policy": policy, "critic": critic, "rollout": rollout}
    placed = {name: ray.get([a.where.remote() for a in g.actors], timeout=120)
              for name, g in groups.items()}
    log("actors placed", placed=placed, gpu_node_ids=gpu_nodes())

    t = time.monotonic()
    for group in (critic, rollout, policy):  # the critic shares the policy's group
        group.shutdown()
    while gpu_nodes() and time.monotonic() - t < 60:
        time.sleep(0.5)
    log("scaled down", seconds=round(time.monotonic() - t, 1))
""")

SEPARATE_RAY = textwrap.dedent("""
    import sys, ray
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)

    @ray.remote
    def ping():
        return "pong"

    print(ray.get(ping.remote()), flush=True)
    for line in sys.stdin:  # one ping per line, until stdin closes
        print(ray.get(ping.remote(), timeout=60), flush=True)
""")


def test_gpu_nodes_scale_up_from_zero_for_our_plan_and_back_down(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    separate_log = tmp_path / "separate_ray.log"
    with open(separate_log, "w") as log:
        separate = subprocess.Popen([sys.executable, "-c", SEPARATE_RAY], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=log, text=True, env=env,
                                    cwd=REPO)
    cluster = LocalAutoscalingCluster(WORKER_TYPES, head_cpus=1, idle_timeout_minutes=0.1)
    try:
        # Up before the fake cluster starts: two Rays starting at once can pick the same port.
        assert separate.stdout.readline().strip() == "pong", \
            "the separate Ray did not start:\n" + separate_log.read_text()[-3000:]
        started = time.monotonic()
        cluster.start()
        print(f"fake cluster at {cluster.address} in {cluster.temp_dir}, "
              f"up in {time.monotonic() - started:.1f} s")
        run = subprocess.run([sys.executable, "-c", DRIVER, *PLAN], env=cluster.client_env(),
                             cwd=REPO, capture_output=True, text=True, timeout=240)
        print(run.stdout[-6000:], run.stderr[-6000:], sep="\n")
        if run.returncode:
            print("autoscaler log:\n" + cluster.autoscaler_log()[-6000:])
        assert run.returncode == 0, "the driver failed (its output and the autoscaler's above)"
        events = {e["event"]: e for e in map(json.loads, (line for line in
                  run.stdout.splitlines() if line.startswith("{")))}

        assert events["start"]["gpu_nodes"] == 0  # nothing with a GPU before the plan asked
        assert events["start"]["rejected_without_autoscaling"]
        assert events["placement groups ready"]["gpu_nodes"] >= 1
        gpu_node_ids = set(events["actors placed"]["gpu_node_ids"])
        for role, placements in events["actors placed"]["placed"].items():
            for node_id, gpu_ids in placements:  # every actor on a started GPU node, with a GPU
                assert node_id in gpu_node_ids and gpu_ids, (role, node_id, gpu_ids)
        assert events["scaled down"]["gpu_nodes"] == 0
        print(f"scale-up {events['placement groups ready']['seconds']} s to "
              f"{events['placement groups ready']['gpu_nodes']} GPU node(s); scale-down "
              f"{events['scaled down']['seconds']} s after the groups were shut down")
    finally:
        own = cluster.processes()
        survivors = cluster.stop()
        answer = ping(separate)
        separate.stdin.close()
        separate.wait(timeout=60)
    print(f"stopped the fake cluster's {len(own)} processes")
    assert own and not survivors, survivors
    assert not os.path.exists(cluster.temp_dir)
    assert answer == "pong", ("the separate Ray did not survive the fake cluster's stop:\n"
                              + separate_log.read_text()[-3000:])


def ping(process) -> str:
    """One round trip to the separate Ray ("pong"), or why there was none."""
    try:
        process.stdin.write("ping\n")
        process.stdin.flush()
        return process.stdout.readline().strip() or f"no answer (exit code {process.poll()})"
    except BrokenPipeError:
        return f"it had exited (exit code {process.wait()})"
