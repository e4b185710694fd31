"""Step metrics of the online loops, in two places: the run's ``metrics.jsonl`` and Ray's
metrics (``ray.util.metrics`` gauges named ``culture_rl_<metric>``), which the Ray dashboard and
its Prometheus endpoint show as ``ray_culture_rl_<metric>``.

Per-culture numbers (``reward_mean/<culture>``) become one gauge with a ``culture`` tag, so a
dashboard panel can split them.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")


def gauge_name(metric: str) -> str:
    """``reward_mean`` -> ``culture_rl_reward_mean`` (Prometheus-safe characters only)."""
    return "culture_rl_" + _UNSAFE.sub("_", metric)


class StepMetrics:
    def __init__(self, path: str | Path, run: str, workflow: str, export_to_ray: bool = True):
        self.path, self.run, self.workflow = Path(path), run, workflow
        self.export_to_ray = export_to_ray
        self._gauges: dict[str, object] = {}

    def _gauge(self, name: str, tagged: bool):
        if name not in self._gauges:
            from ray.util.metrics import Gauge

            keys = ("run", "workflow", "culture") if tagged else ("run", "workflow")
            self._gauges[name] = Gauge(name, description=f"culture-rl {self.workflow} metric",
                                       tag_keys=keys)
        return self._gauges[name]

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (a resumed run rewrites the steps it redoes)."""
        if not self.path.is_file():
            return
        kept = [line for line in self.path.read_text("utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept), "utf-8")

    def log(self, step: int, values: dict[str, float]) -> dict:
        record = {"step": step, "time": round(time.time(), 3),
                  **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in values.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.export_to_ray:
            self._export(values)
        return record

    def _export(self, values: dict[str, float]) -> None:
        tags = {"run": self.run, "workflow": self.workflow}
        for key, value in values.items():
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            metric, _, culture = key.partition("/")
            if culture:
                self._gauge(gauge_name(metric), tagged=True).set(value, {**tags,
                                                                        "culture": culture})
            else:
                self._gauge(gauge_name(metric), tagged=False).set(value, tags)
