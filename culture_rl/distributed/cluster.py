"""Joining Ray, checking a resource plan before any work is scheduled, and actor groups.

An impossible plan (more workers or GPUs than the cluster offers) would otherwise sit pending
forever. On an autoscaling cluster (``resources.autoscaling``) the check is skipped: the GPU
nodes the plan waits for are started on demand and are not in ``cluster_resources()`` yet.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

from culture_rl.config import ResourcesConfig
from culture_rl.core.errors import ResourceError


def connect(address: str | None = None):
    """``ray.init`` once: the given address, else ``RAY_ADDRESS`` (jobs), else a local Ray
    whose dashboard listens on loopback only (reach a remote one through an SSH tunnel).
    Returns Ray's context when this call joined, else None."""
    import ray

    if ray.is_initialized():
        return None
    target = address or os.environ.get("RAY_ADDRESS") or None
    local = {"dashboard_host": "127.0.0.1"} if target is None else {}
    return ray.init(address=target, log_to_driver=True, include_dashboard=None,
                    configure_logging=False, **local)


def check_resources(resources: ResourcesConfig) -> None:
    """Fail fast (ResourceError naming the field) when the plan cannot fit the cluster."""
    import ray

    if resources.autoscaling:
        return  # nodes that can start on demand are not in cluster_resources() yet
    total = ray.cluster_resources()
    need_cpu = resources.num_workers * resources.cpus_per_worker
    need_gpu = resources.num_workers if resources.use_gpu else 0
    if need_gpu and total.get("GPU", 0) < need_gpu:
        raise ResourceError(f"resources: {resources.num_workers} GPU workers need "
                            f"{need_gpu} GPUs but the cluster has {total.get('GPU', 0):g} "
                            "(set resources.use_gpu=false to train on CPUs)")
    if total.get("CPU", 0) < need_cpu:
        raise ResourceError(f"resources: {resources.num_workers} workers x "
                            f"{resources.cpus_per_worker:g} CPUs = {need_cpu:g} CPUs but the "
                            f"cluster has {total.get('CPU', 0):g} (lower resources.num_workers "
                            "or resources.cpus_per_worker)")


# ------------------------------------------------------------------- resource plan for actors


@dataclass(frozen=True)
class Role:
    """One actor group of an online loop: ``count`` actors of ``cpus``/``gpus`` each."""

    name: str
    count: int
    cpus: float
    gpus: float = 0.0
    colocated_with: str | None = None  # shares that role's bundles (its demand is not added)


def plan_totals(roles: list[Role]) -> dict[str, float]:
    own = [r for r in roles if r.colocated_with is None]
    return {"CPU": sum(r.count * r.cpus for r in own), "GPU": sum(r.count * r.gpus for r in own)}


def describe_plan(roles: list[Role]) -> str:
    lines = ["resource plan:"]
    for role in roles:
        where = f" (on {role.colocated_with}'s bundles)" if role.colocated_with else ""
        lines.append(f"  {role.name:<16} {role.count} x {{CPU: {role.cpus:g}, GPU: "
                     f"{role.gpus:g}}}{where}")
    totals = plan_totals(roles)
    lines.append(f"  total            CPU {totals['CPU']:g}, GPU {totals['GPU']:g}")
    return "\n".join(lines)


def check_plan(roles: list[Role], available: dict[str, float], autoscaling: bool = False,
               section: str = "ppo_resources") -> None:
    """ResourceError with the numbers when the roles cannot all be placed (checked before any
    placement group is requested, so an impossible plan fails in seconds instead of hanging)."""
    if autoscaling:
        return
    totals = plan_totals(roles)
    for resource in ("GPU", "CPU"):
        need, have = totals[resource], float(available.get(resource, 0))
        if need > have + 1e-9:
            parts = ", ".join(f"{r.name} {r.count}x{getattr(r, resource.lower() + 's'):g}"
                              for r in roles if r.colocated_with is None
                              and getattr(r, resource.lower() + "s"))
            raise ResourceError(f"{section}: the plan needs {need:g} {resource}s ({parts}) "
                                f"but the cluster has {have:g}; lower the counts or per-actor "
                                f"{resource}s in {section}, or set "
                                "resources.autoscaling=true on an autoscaling cluster")


class ActorGroup:
    """``count`` actors of one class on the bundles of one placement group (PACK: same node
    where possible), created only once the group is ready or failing after ``timeout_s``."""

    def __init__(self, role: Role, actor_class, args_for_rank, timeout_s: float,
                 placement_group=None, share: float = 1.0,
                 timeout_field: str = "ppo_resources.placement_timeout_s"):
        import ray
        from ray.util.placement_group import placement_group as make_placement_group

        self.role = role
        self.owns_placement_group = placement_group is None
        if placement_group is None:
            bundles = [{"CPU": role.cpus, "GPU": role.gpus} if role.gpus else {"CPU": role.cpus}
                       for _ in range(role.count)]
            # The role names it on the dashboard; the suffix keeps two loops in one Ray
            # namespace (two controllers in one driver, say) from clashing on the name.
            placement_group = make_placement_group(
                bundles, strategy="PACK", name=f"culture_rl_{role.name}_{uuid.uuid4().hex[:8]}")
            try:
                ray.get(placement_group.ready(), timeout=timeout_s)
            except ray.exceptions.GetTimeoutError:
                ray.util.remove_placement_group(placement_group)
                raise ResourceError(f"{role.name}: placement group of {role.count} x "
                                    f"{bundles[0]} not ready after {timeout_s:g} s "
                                    f"({timeout_field}); the cluster cannot place it "
                                    "now") from None
        self.placement_group = placement_group
        self.actor_class, self.args_for_rank, self.share = actor_class, args_for_rank, share
        self.actors = [self._start(rank) for rank in range(role.count)]

    def _start(self, rank: int):
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        strategy = PlacementGroupSchedulingStrategy(placement_group=self.placement_group,
                                                    placement_group_bundle_index=rank)
        options = {"num_cpus": self.role.cpus * self.share, "scheduling_strategy": strategy}
        if self.role.gpus:
            options["num_gpus"] = self.role.gpus * self.share
        args, kwargs = self.args_for_rank(rank)
        return self.actor_class.options(**options).remote(*args, **kwargs)

    def replace(self, rank: int):
        """Start a new actor on ``rank``'s bundle (its predecessor died: the bundle is free)."""
        import ray

        ray.kill(self.actors[rank], no_restart=True)  # make sure it is gone, not restarting
        self.actors[rank] = self._start(rank)
        return self.actors[rank]

    def __len__(self) -> int:
        return len(self.actors)

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        if self.owns_placement_group:
            ray.util.remove_placement_group(self.placement_group)


def gather_replacing_dead(submit, count: int, replace, *, timeout_s: float, max_retries: int,
                          what: str, error: type[Exception]) -> list:
    """Results of ``count`` chunks, in order: ``submit(i)`` starts chunk i on actor i and
    returns its ref. An actor that dies (process killed, node lost) is replaced by
    ``replace(i)`` and its chunk resubmitted, so the step it serves is not lost; the same chunk
    failing more than ``max_retries`` times, or any wait past ``timeout_s``, raises ``error``
    naming ``what``."""
    import ray

    pending = {i: submit(i) for i in range(count)}
    attempts = dict.fromkeys(pending, 0)
    results = {}
    while pending:
        index, ref = next(iter(pending.items()))
        try:
            results[index] = ray.get(ref, timeout=timeout_s)
            del pending[index]
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as err:
            attempts[index] += 1
            if attempts[index] > max_retries:
                raise error(f"{what}: actor {index} died {attempts[index]} times "
                            f"({type(err).__name__})") from err
            replace(index)
            pending[index] = submit(index)
        except ray.exceptions.GetTimeoutError as err:
            raise error(f"{what}: actor {index} did not answer within {timeout_s:g} s") from err
    return [results[i] for i in range(count)]
