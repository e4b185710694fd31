"""Metrics of culture-rl runs, in two places: the run's ``metrics.jsonl`` and Ray's metrics
(``ray.util.metrics`` gauges named ``culture_rl_<metric>``), which the Ray dashboard and its
Prometheus endpoint show as ``ray_culture_rl_<metric>``.

Every process that has numbers exports them through :class:`RayGauges`: the PPO controller (step
metrics), rank 0 of a Ray Train job (loss, tokens/s, held-out P@5), rollout actors (their queue
depth) and the evaluation (P@k, survey distances, ranking rho per model and culture).
Per-culture numbers (``reward_mean/<culture>``) become one gauge with a ``culture`` tag, so a
dashboard panel can split them. ``cluster/grafana/culture_rl.json`` charts these series.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

from culture_rl.core.redact import redact

_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")


def gauge_name(metric: str) -> str:
    """``reward_mean`` -> ``culture_rl_reward_mean`` (Prometheus-safe characters only)."""
    return "culture_rl_" + _UNSAFE.sub("_", metric)


ALL_CULTURES = "all"


def gauge_updates(values: dict, tags: dict[str, str]) -> list[tuple[str, dict, float]]:
    """The gauge updates ``values`` makes: ``(gauge name, tags, value)`` for every finite
    number. ``metric/<culture>`` sets the ``culture`` tag; other keys keep the given one (or
    ``all``), so a series always has the same tag keys. Pure, so it is unit-tested."""
    updates = []
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            continue
        metric, _, culture = key.partition("/")
        point_tags = {"culture": ALL_CULTURES, **tags}
        if culture:
            point_tags["culture"] = culture
        updates.append((gauge_name(metric), point_tags, float(value)))
    return updates


class RayGauges:
    """Sets ``culture_rl_*`` gauges with fixed tags (run, workflow, ...) from dicts of numbers.

    Ray keeps the last value per tag values; the node's metrics agent serves it on the
    Prometheus endpoint for as long as the process lives (and briefly after). Outside a Ray
    worker or driver nothing is exported (unit tests, scripts)."""

    def __init__(self, **tags: str):
        self.tags = {k: str(v) for k, v in tags.items()}
        self._gauges: dict[str, object] = {}

    def set(self, values: dict) -> None:
        import ray

        if not ray.is_initialized():
            return
        from ray.util.metrics import Gauge

        for name, tags, value in gauge_updates(values, self.tags):
            if name not in self._gauges:
                self._gauges[name] = Gauge(name, description=f"culture-rl metric {name}",
                                           tag_keys=tuple(sorted(tags)))
            self._gauges[name].set(value, tags)


class StepMetrics:
    def __init__(self, path: str | Path, run: str, workflow: str, export_to_ray: bool = True):
        self.path, self.run, self.workflow = Path(path), run, workflow
        self.gauges = RayGauges(run=run, workflow=workflow) if export_to_ray else None

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (a resumed run rewrites the steps it redoes)."""
        if not self.path.is_file():
            return
        kept = [line for line in self.path.read_text("utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept), "utf-8")

    def log(self, step: int, values: dict[str, float]) -> dict:
        # Redacted: metrics.jsonl is read by anyone with the run folder, and a value passed
        # through here (a tag, a note) must never carry a credential along.
        record = redact({"step": step, "time": round(time.time(), 3),
                         **{k: (round(v, 6) if isinstance(v, float) else v)
                            for k, v in values.items()}})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.gauges is not None:
            self.gauges.set(values)
        return record
