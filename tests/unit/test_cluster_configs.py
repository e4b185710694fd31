"""The cluster configs in cluster/: Ray's own validation, KubeRay's required fields, our rules
(GPU nodes start at zero, no public dashboard, token auth, spot and on-demand GPU types, the
image's CUDA matches the torch wheel) and agreement with our runs: every resource our plans ask
for is offered by the GPU node types, Ray's autoscaler would put each paper run on one 8-GPU
node, and the paper runs' folders lie on storage every node mounts. Each check is also run on
a broken copy, which it must reject."""

from __future__ import annotations

import collections
import copy
import re
import shlex
from functools import partial
from pathlib import Path

import pytest
import yaml

from culture_rl.config import load_config
from culture_rl.distributed.cluster import Role, plan_totals
from culture_rl.rl.plan import ppo_roles

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
LAUNCHERS = ["aws-gpu.yaml", "gcp-gpu.yaml"]
CLUSTERS = LAUNCHERS + ["kuberay/raycluster.yaml"]
PAPER_CONFIGS = sorted(p.name for p in (REPO / "configs").glob("align_*.yaml")
                       if "quickstart" not in p.name)


def workflow_of(config_name: str) -> str:
    return "ppo" if config_name.startswith("align_ppo") else "sft"
RAY_PORTS = {6379, 8265, 10001}  # GCS, dashboard + job API, Ray client: never public


def load_yaml(relative: str) -> dict:
    return yaml.safe_load((CLUSTER / relative).read_text())


# ------------------------------------------------------------- Ray cluster launcher configs


def ray_up_config(config: dict) -> dict:
    """What `ray up` does with the file before it needs cloud credentials: fill in the
    provider's defaults, merge the setup commands, then validate against Ray's schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def gpu_types(config: dict) -> dict:
    return {name: t for name, t in config["available_node_types"].items()
            if t["resources"].get("GPU", 0) > 0}


def is_spot(node_config: dict) -> bool:
    market = node_config.get("InstanceMarketOptions", {}).get("MarketType")          # AWS
    scheduling = node_config.get("scheduling", {})                                     # GCP
    return market == "spot" or scheduling.get("provisioningModel") == "SPOT" or \
        bool(scheduling.get("preemptible"))


def launcher_problems(config: dict) -> list[str]:
    """Our rules for a launcher config; empty when it follows them all."""
    problems = []
    head = config["available_node_types"][config["head_node_type"]]
    if head["resources"].get("GPU", 0):
        problems.append("the head node type has GPUs")
    if is_spot(head["node_config"]):
        problems.append("the head node is spot/preemptible")
    gpus = gpu_types(config)
    for name, node_type in gpus.items():
        if node_type.get("min_workers", 0) != 0:
            problems.append(f"{name}: min_workers must be 0 (GPU nodes only on demand)")
    enabled = [t for t in gpus.values() if t.get("max_workers", 0) > 0]
    if not any(is_spot(t["node_config"]) for t in gpus.values()):
        problems.append("no spot/preemptible GPU worker type")
    if not any(not is_spot(t["node_config"]) for t in enabled):
        problems.append("no on-demand GPU worker type that may start")
    if not 0 < config.get("idle_timeout_minutes", 0) <= 60:
        problems.append("idle_timeout_minutes must be set (0 < minutes <= 60)")

    image = config.get("docker", {}).get("image", "")
    cuda = re.search(r"-(cu\d+)$", image)
    if not image.startswith("rayproject/ray:") or not cuda:
        problems.append(f"docker image {image!r} is not a rayproject/ray CUDA build")
    setup = config.get("setup_commands", [])
    torch = [c for c in setup if "torch==" in c]
    if not torch or not cuda or f"/whl/{cuda.group(1)}" not in torch[0]:
        problems.append("setup_commands must pin torch built for the image's CUDA")
    synced = [remote for remote, local in config.get("file_mounts", {}).items() if local == "."]
    if not synced or not any(f"pip install --quiet -e {synced[0]}" in c for c in setup):
        problems.append("the project is not synced (file_mounts '.') and pip-installed")

    for rule in config["provider"].get("security_group", {}).get("IpPermissions", []):
        public = any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges", []))
        ports = set(range(rule.get("FromPort", 0), rule.get("ToPort", 65535) + 1))
        if public and ports & RAY_PORTS:
            problems.append(f"security group opens {sorted(ports & RAY_PORTS)} to the world")
    head_start = " ".join(config.get("head_start_ray_commands", []))
    if "--dashboard-host=0.0.0.0" in head_start:
        problems.append("the dashboard listens on every interface; tunnel to loopback")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        if "RAY_AUTH_MODE=token" not in " ".join(config.get(key, [])):
            problems.append(f"{key}: Ray is not started with RAY_AUTH_MODE=token")
    return problems


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_config_passes_ray_validation(name):
    prepared = ray_up_config(load_yaml(name))
    assert prepared["head_node_type"] in prepared["available_node_types"]
    assert gpu_types(prepared)


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_config_follows_our_rules(name):
    assert launcher_problems(load_yaml(name)) == []


def _drop_resources(c):
    del c["available_node_types"][next(iter(gpu_types(c)))]["resources"]


def _fractional_gpu(c):
    next(iter(gpu_types(c).values()))["resources"]["GPU"] = 0.5


def _string_min_workers(c):
    next(iter(gpu_types(c).values()))["min_workers"] = "0"


def _unknown_head(c):
    c["head_node_type"] = "no-such-type"


def _unknown_key(c):
    c["idle_timeout"] = 5  # a typo of idle_timeout_minutes


@pytest.mark.parametrize("name", LAUNCHERS)
@pytest.mark.parametrize("breaks", [_drop_resources, _fractional_gpu, _string_min_workers,
                                    _unknown_head, _unknown_key])
def test_broken_launcher_copy_fails_ray_validation(name, breaks):
    import jsonschema

    config = load_yaml(name)
    breaks(config)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        ray_up_config(config)


def _warm_gpu_node(c):
    next(iter(gpu_types(c).values()))["min_workers"] = 1


def _public_dashboard(c):
    c["provider"]["security_group"] = {"IpPermissions": [
        {"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp",
         "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}


def _dashboard_everywhere(c):
    c["head_start_ray_commands"] = [cmd.replace("--dashboard-host=127.0.0.1",
                                                "--dashboard-host=0.0.0.0")
                                    for cmd in c["head_start_ray_commands"]]


def _other_cuda_torch(c):
    c["setup_commands"] = [cmd.replace("/whl/cu128", "/whl/cu121") for cmd in c["setup_commands"]]


def _no_spot(c):
    for node_type in gpu_types(c).values():
        node_type["node_config"].pop("InstanceMarketOptions", None)
        node_type["node_config"].pop("scheduling", None)


def _no_token(c):
    c["worker_start_ray_commands"] = [cmd.replace("RAY_AUTH_MODE=token ", "")
                                      for cmd in c["worker_start_ray_commands"]]


@pytest.mark.parametrize("name", LAUNCHERS)
@pytest.mark.parametrize("breaks, complaint", [
    (_warm_gpu_node, "min_workers must be 0"), (_public_dashboard, "to the world"),
    (_dashboard_everywhere, "every interface"), (_other_cuda_torch, "pin torch"),
    (_no_spot, "no spot"), (_no_token, "RAY_AUTH_MODE=token")])
def test_broken_launcher_copy_breaks_our_rules(name, breaks, complaint):
    config = load_yaml(name)
    breaks(config)
    assert any(complaint in p for p in launcher_problems(config)), launcher_problems(config)


# ------------------------------------------------------------------------ KubeRay manifests


def quantity(value) -> float:
    """A Kubernetes CPU/GPU quantity as a number ("88", 8, "500m")."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def group_resources(group: dict) -> dict:
    """What Ray on a pod of this group offers: rayStartParams win, else the container's
    limits (KubeRay passes them to `ray start`)."""
    params = group.get("rayStartParams", {})
    limits = group["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
    cpu = params.get("num-cpus", limits.get("cpu", 0))
    gpu = params.get("num-gpus", limits.get("nvidia.com/gpu", 0))
    return {"CPU": int(quantity(cpu)), "GPU": int(quantity(gpu))}


def cluster_spec_problems(spec: dict) -> list[str]:
    """The fields KubeRay needs for an autoscaling RayCluster spec, and our rules."""
    problems = []
    if spec.get("enableInTreeAutoscaling") is not True:
        problems.append("enableInTreeAutoscaling must be true")
    if not spec.get("autoscalerOptions", {}).get("idleTimeoutSeconds", 0) > 0:
        problems.append("autoscalerOptions.idleTimeoutSeconds must be set")
    head = spec.get("headGroupSpec", {})
    groups = [("headGroupSpec", head)] + [
        (f"workerGroupSpecs[{i}]", g) for i, g in enumerate(spec.get("workerGroupSpecs", []))]
    for where, group in groups:
        params = group.get("rayStartParams")
        if not isinstance(params, dict):
            problems.append(f"{where}: rayStartParams missing")
        elif any(not isinstance(v, str) for v in params.values()):
            problems.append(f"{where}: rayStartParams values must be strings")
        containers = group.get("template", {}).get("spec", {}).get("containers", [])
        if not containers or any(not c.get("name") or not c.get("image") for c in containers):
            problems.append(f"{where}: template containers need a name and an image")
    if head.get("rayStartParams", {}).get("num-gpus") != "0":
        problems.append("the head must not offer GPUs (num-gpus: \"0\")")
    if head.get("serviceType", "ClusterIP") in ("LoadBalancer", "NodePort"):
        problems.append("the head service must not be public (ClusterIP)")
    workers = spec.get("workerGroupSpecs", [])
    names = [g.get("groupName") for g in workers]
    if not workers or None in names or len(set(names)) != len(names):
        problems.append("worker groups need unique groupNames")
    for group in workers:
        low, high = group.get("minReplicas", 0), group.get("maxReplicas", 0)
        if not low <= group.get("replicas", low) <= high:
            problems.append(f"{group.get('groupName')}: minReplicas <= replicas <= maxReplicas")
        if group_resources(group)["GPU"] and low != 0:
            problems.append(f"{group.get('groupName')}: GPU groups need minReplicas 0")
    if not any(group_resources(g)["GPU"] for g in workers):
        problems.append("no GPU worker group")
    return problems


def manifest_problems(doc: dict, kind: str) -> list[str]:
    problems = []
    if doc.get("apiVersion") != "ray.io/v1" or doc.get("kind") != kind:
        problems.append(f"expected apiVersion ray.io/v1, kind {kind}")
    name = doc.get("metadata", {}).get("name", "")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name):
        problems.append("metadata.name must be a DNS-1123 label")
    spec = doc.get("spec", {})
    if kind == "RayCluster":
        return problems + cluster_spec_problems(spec)
    problems += cluster_spec_problems(spec.get("rayClusterSpec", {}))
    if spec.get("shutdownAfterJobFinishes") is not True:
        problems.append("shutdownAfterJobFinishes must be true (free the GPUs)")
    if not isinstance(spec.get("ttlSecondsAfterFinished"), int):
        problems.append("ttlSecondsAfterFinished must be set")
    problems += entrypoint_problems(spec.get("entrypoint", ""))
    if not problems:  # the run folder must be on a volume every pod mounts
        config = entrypoint_config(spec["entrypoint"])
        if not on_shared_storage(config.run.storage_path, pod_mounts(spec["rayClusterSpec"])):
            problems.append(f"run.storage_path {config.run.storage_path} is not on a volume "
                            "every pod mounts")
    return problems


def entrypoint_problems(entrypoint: str) -> list[str]:
    """`python -m ray_jobs.<workflow> --config FILE [key=value ...]`: the module and the config
    exist here, and the config loads with the overrides."""
    args = shlex.split(entrypoint)
    if args[:2] != ["python", "-m"] or len(args) < 5 or not args[2].startswith("ray_jobs.") \
            or args[3] != "--config":
        return [f"entrypoint is not `python -m ray_jobs.<workflow> --config FILE`: {entrypoint}"]
    if not (REPO / "ray_jobs" / f"{args[2].split('.', 1)[1]}.py").is_file():
        return [f"no module {args[2]} in ray_jobs/"]
    local = REPO / "configs" / args[4].split("configs/", 1)[-1]  # the image's copy of configs/
    if "configs/" not in args[4] or not local.is_file():
        return [f"entrypoint config {args[4]} is not in configs/"]
    entrypoint_config(entrypoint)  # raises on an unknown key or a bad value in the overrides
    return []


def entrypoint_config(entrypoint: str):
    args = shlex.split(entrypoint)
    return load_config(REPO / "configs" / args[4].split("configs/", 1)[-1], args[5:])


def pod_mounts(spec: dict) -> set[str]:
    """The paths mounted in every container of the head and of every worker group."""
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    mounts = [{m["mountPath"] for m in c.get("volumeMounts", [])}
              for g in groups for c in g["template"]["spec"]["containers"]]
    return set.intersection(*mounts)


def on_shared_storage(path: str, mounts: set[str]) -> bool:
    return any(Path(path).is_relative_to(m) for m in mounts if m not in ("/", "/dev/shm"))


def test_raycluster_has_what_kuberay_needs():
    assert manifest_problems(load_yaml("kuberay/raycluster.yaml"), "RayCluster") == []


def test_rayjob_has_what_kuberay_needs_and_mirrors_the_raycluster():
    job = load_yaml("kuberay/rayjob.yaml")
    assert manifest_problems(job, "RayJob") == []
    assert job["spec"]["rayClusterSpec"] == load_yaml("kuberay/raycluster.yaml")["spec"]


def _spec(doc):
    return doc["spec"].get("rayClusterSpec", doc["spec"])


def _gpu_group(doc):
    return next(g for g in _spec(doc)["workerGroupSpecs"] if group_resources(g)["GPU"])


def _warm_gpu_group(doc):
    _gpu_group(doc)["minReplicas"] = 1


def _replicas_over_max(doc):
    _gpu_group(doc)["replicas"] = _gpu_group(doc)["maxReplicas"] + 1


def _unnamed_group(doc):
    del _gpu_group(doc)["groupName"]


def _integer_start_param(doc):
    _spec(doc)["headGroupSpec"]["rayStartParams"]["num-gpus"] = 0  # KubeRay wants "0"


def _no_autoscaler(doc):
    _spec(doc)["enableInTreeAutoscaling"] = False


def _public_head(doc):
    _spec(doc)["headGroupSpec"]["serviceType"] = "LoadBalancer"


def _no_image(doc):
    del _gpu_group(doc)["template"]["spec"]["containers"][0]["image"]


def _old_api(doc):
    doc["apiVersion"] = "ray.io/v1alpha1"


@pytest.mark.parametrize("name, kind", [("kuberay/raycluster.yaml", "RayCluster"),
                                        ("kuberay/rayjob.yaml", "RayJob")])
@pytest.mark.parametrize("breaks, complaint", [
    (_warm_gpu_group, "minReplicas 0"), (_replicas_over_max, "minReplicas <= replicas"),
    (_unnamed_group, "groupName"), (_integer_start_param, "must be strings"),
    (_no_autoscaler, "enableInTreeAutoscaling"), (_public_head, "ClusterIP"),
    (_no_image, "name and an image"), (_old_api, "apiVersion")])
def test_broken_manifest_copy_is_rejected(name, kind, breaks, complaint):
    doc = load_yaml(name)
    breaks(doc)
    assert any(complaint in p for p in manifest_problems(doc, kind)), manifest_problems(doc, kind)


@pytest.mark.parametrize("entrypoint, complaint", [
    ("python train.py --config configs/quickstart.yaml", "is not `python -m ray_jobs"),
    ("python -m ray_jobs.no_such_workflow --config configs/quickstart.yaml", "no module"),
    ("python -m ray_jobs.align_ppo --config configs/missing.yaml", "not in configs/")])
def test_broken_rayjob_entrypoint_is_rejected(entrypoint, complaint):
    assert any(complaint in p for p in entrypoint_problems(entrypoint))


def test_rayjob_run_folder_off_the_shared_volume_is_rejected():
    job = load_yaml("kuberay/rayjob.yaml")
    job["spec"]["entrypoint"] = job["spec"]["entrypoint"].replace(
        "run.storage_path=/mnt/cluster_storage/culture-rl", "run.storage_path=/tmp/runs")
    assert any("not on a volume every pod mounts" in p for p in manifest_problems(job, "RayJob"))


def test_rayjob_entrypoint_overrides_are_checked():
    from culture_rl.core.errors import ConfigError

    with pytest.raises(ConfigError):
        entrypoint_problems("python -m ray_jobs.align_ppo --config "
                            "/home/ray/culture-rl/configs/align_ppo_qwen25_7b_zh.yaml "
                            "run.no_such_field=1")


# -------------------------------------------------- our resource plans vs the node types


def node_types(name: str) -> tuple[str, dict]:
    """(head type, {type: {resources, min_workers, max_workers}}) of a launcher config or of
    the KubeRay RayCluster, in the launcher's terms."""
    if not name.startswith("kuberay/"):
        config = ray_up_config(load_yaml(name))
        return config["head_node_type"], config["available_node_types"]
    spec = load_yaml(name)["spec"]
    types = {"head": {"resources": group_resources(spec["headGroupSpec"]),
                      "min_workers": 0, "max_workers": 0}}
    for group in spec["workerGroupSpecs"]:
        types[group["groupName"]] = {"resources": group_resources(group),
                                     "min_workers": group["minReplicas"],
                                     "max_workers": group["maxReplicas"]}
    return "head", types


def bundle(role: Role) -> dict:
    """One actor's bundle, as ActorGroup asks for it (culture_rl/distributed/cluster.py)."""
    return {"CPU": role.cpus, "GPU": role.gpus} if role.gpus else {"CPU": role.cpus}


def plan_demands(config, workflow: str) -> list[list[dict]]:
    """The placement groups (or plain actors) a run asks for, in the order it asks: PPO's
    actor groups (critic colocated: on the policy's bundles), or SFT's Ray Train workers."""
    if workflow == "ppo":
        return [[bundle(r)] * r.count for r in ppo_roles(config)
                if r.colocated_with is None and r.count]
    res = config.resources
    worker = {"CPU": res.cpus_per_worker, **({"GPU": 1} if res.use_gpu else {})}
    return [[worker] * res.num_workers]


def nodes_launched(head: str, types: dict, demands: list[list[dict]]) -> dict:
    """The worker nodes Ray's autoscaler (v1, its own bin packing and node-type scorer) starts
    for these demands, asked one after the other on a cluster that has only its head."""
    from ray.autoscaler._private.node_provider_availability_tracker import (
        NodeAvailabilitySummary,
    )
    from ray.autoscaler._private.resource_demand_scheduler import (
        _default_utilization_scorer,
        get_bin_pack_residual,
        get_nodes_for,
    )

    scorer = partial(_default_utilization_scorer,
                     node_availability_summary=NodeAvailabilitySummary(node_availabilities={}))
    launched = collections.Counter()
    free = [dict(types[head]["resources"])]
    for demand in demands:
        residual, free = get_bin_pack_residual(free, demand)
        if residual:
            new, unplaceable = get_nodes_for(types, {head: 1, **launched}, head, 100, residual,
                                             scorer)
            assert not unplaceable, f"no node type can hold {unplaceable}"
            for node_type, count in new.items():
                launched[node_type] += count
                free += [dict(types[node_type]["resources"]) for _ in range(count)]
            residual, free = get_bin_pack_residual(free, residual)
            assert not residual, residual
    return dict(launched)


@pytest.mark.parametrize("cluster", CLUSTERS)
@pytest.mark.parametrize("config_name", PAPER_CONFIGS)
def test_every_resource_the_paper_plans_ask_for_is_offered(cluster, config_name):
    config = load_config(REPO / "configs" / config_name)
    asked = {name for demand in plan_demands(config, workflow_of(config_name))
             for b in demand for name in b}
    _, types = node_types(cluster)
    gpu_node_types = [t for t in types.values() if t["resources"].get("GPU", 0) > 0]
    assert {"CPU", "GPU"} <= asked
    for node_type in gpu_node_types:
        assert asked <= set(node_type["resources"]), (asked, node_type["resources"])


@pytest.mark.parametrize("cluster", CLUSTERS)
@pytest.mark.parametrize("config_name", PAPER_CONFIGS)
def test_paper_plans_fit_one_8gpu_node_and_the_autoscaler_picks_it(cluster, config_name):
    config = load_config(REPO / "configs" / config_name)
    head, types = node_types(cluster)
    eight = {name: t for name, t in types.items() if t["resources"].get("GPU") == 8
             and t["max_workers"] > 0}
    assert eight, "no 8-GPU node type that may start"
    node = next(iter(eight.values()))["resources"]
    demands = plan_demands(config, workflow_of(config_name))
    for b in (b for demand in demands for b in demand):
        assert all(b[k] <= node.get(k, 0) for k in b), f"bundle {b} does not fit {node}"
    if workflow_of(config_name) == "ppo":
        totals = plan_totals(ppo_roles(config))
        assert totals["GPU"] <= node["GPU"] and totals["CPU"] <= node["CPU"], (totals, node)
    launched = nodes_launched(head, types, demands)
    assert launched == {next(iter(eight)): 1}, launched


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_a_small_gpu_trial_starts_a_1gpu_spot_node(cluster):
    config = load_config(REPO / "configs" / "quickstart.yaml",
                         ["resources.use_gpu=true", "resources.num_workers=1"])
    head, types = node_types(cluster)
    launched = nodes_launched(head, types, plan_demands(config, "sft"))
    assert len(launched) == 1 and list(launched.values()) == [1], launched
    assert types[next(iter(launched))]["resources"]["GPU"] == 1


def test_plan_checks_fail_when_the_node_types_disagree():
    head, types = node_types("aws-gpu.yaml")
    ppo = plan_demands(load_config(REPO / "configs" / "align_ppo_qwen25_7b_zh.yaml"), "ppo")
    # A 1-GPU type with 8 CPUs takes every paper bundle: the autoscaler scatters the run.
    roomy = copy.deepcopy(types)
    roomy["gpu-1x-spot"]["resources"]["CPU"] = 8
    assert nodes_launched(head, roomy, ppo) != {"gpu-8x": 1}
    # Node types that name the GPU differently (a custom resource) cannot hold the plan.
    renamed = copy.deepcopy(types)
    for node_type in renamed.values():
        node_type["resources"].pop("GPU", None)
        node_type["resources"]["A100"] = 8
    with pytest.raises(AssertionError, match="no node type can hold"):
        nodes_launched(head, renamed, ppo)
    # A plan bigger than one node (16 GPUs) is not "one 8-GPU node".
    big = load_config(REPO / "configs" / "align_ppo_qwen25_7b_zh.yaml",
                      ["ppo_resources.trainer_workers=8", "ppo_resources.rollout_workers=8"])
    assert plan_totals(ppo_roles(big))["GPU"] > 8
    assert nodes_launched(head, types, plan_demands(big, "ppo")) != {"gpu-8x": 1}


# ---------------------------------------------------------------------------- run storage


def shared_storage(cluster: str) -> set[str]:
    """Paths every node's Ray sees as the same storage (see launcher_shared_storage), or for
    KubeRay the volumes every container mounts."""
    if cluster.startswith("kuberay/"):
        return pod_mounts(load_yaml(cluster)["spec"])
    return launcher_shared_storage(load_yaml(cluster))


def launcher_shared_storage(config: dict) -> set[str]:
    """Host folders the initialization commands mount over NFS and docker hands to the
    container at the same path."""
    init = " ".join(config.get("initialization_commands", []))
    shared = set()
    for option in config["docker"].get("run_options", []):
        volume = re.fullmatch(r"-v (\S+):(\S+)", option)
        if volume and volume.group(1) == volume.group(2) and \
                re.search(rf"mount -t nfs\S* .* {re.escape(volume.group(1))}\b", init):
            shared.add(volume.group(2))
    return shared


@pytest.mark.parametrize("cluster", CLUSTERS)
@pytest.mark.parametrize("config_name", PAPER_CONFIGS)
def test_paper_runs_read_and_write_storage_every_node_sees(cluster, config_name):
    config = load_config(REPO / "configs" / config_name)
    shared = shared_storage(cluster)
    assert on_shared_storage(config.run.storage_path, shared), (config.run.storage_path, shared)
    if workflow_of(config_name) == "ppo":  # the SFT export it starts from
        assert on_shared_storage(config.ppo.policy_path, shared), config.ppo.policy_path


@pytest.mark.parametrize("name", LAUNCHERS)
def test_storage_check_fails_without_the_nfs_mount_or_the_docker_volume(name):
    config = load_yaml(name)
    unmounted = copy.deepcopy(config)
    unmounted["initialization_commands"] = [c for c in config["initialization_commands"]
                                            if "mount -t" not in c]
    assert launcher_shared_storage(config) and not launcher_shared_storage(unmounted)
    hidden = copy.deepcopy(config)
    hidden["docker"]["run_options"] = [o for o in config["docker"]["run_options"]
                                       if not o.startswith("-v ")]
    assert not launcher_shared_storage(hidden)
