"""A per-culture LoRA adapter set: saved together, loaded together, served with routing.

The set is a folder with ``adapter_set.json`` (the base model and, per culture, the adapter's
folder); :func:`load_adapter_set` gives one ``PeftModel`` holding every adapter, named by culture,
unmerged, so one rollout worker serves all cultures and :func:`routed` runs each request with its
culture's adapter (requests naming no culture run on the base model, adapters off).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Sequence

from culture_rl.core.errors import ConfigError
from culture_rl.models.loading import load_model

ADAPTER_SET = "adapter_set.json"


def adapter_name(culture: str) -> str:
    """peft keeps adapters in ModuleDicts: names may not hold '.'; keep them readable."""
    return "culture_" + re.sub(r"[^0-9A-Za-z_]", "_", culture)


def is_adapter_set(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_SET).is_file()


def write_adapter_set(folder: str | Path, base_model: str, adapters: dict[str, str | Path]
                      ) -> Path:
    """Write the manifest (written last, by rename: a folder without it is not a set)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"base_model": str(base_model),
                "adapters": {c: str(Path(p).resolve()) for c, p in adapters.items()}}
    existing = folder / ADAPTER_SET
    if existing.is_file() and json.loads(existing.read_text("utf-8")) == manifest:
        return folder  # unchanged: keep its timestamp (evaluations are cached by it)
    partial = folder / (ADAPTER_SET + ".partial")
    partial.write_text(json.dumps(manifest, indent=2, ensure_ascii=False), "utf-8")
    partial.replace(folder / ADAPTER_SET)
    return folder


def read_adapter_set(folder: str | Path) -> dict:
    path = Path(folder) / ADAPTER_SET
    manifest = json.loads(path.read_text("utf-8"))
    missing = [c for c, p in manifest["adapters"].items()
               if not (Path(p) / "adapter_config.json").is_file()]
    if missing:
        raise ConfigError(f"{path}: the adapter of {missing[0]!r} is missing "
                          f"({manifest['adapters'][missing[0]]})", field="spa")
    return manifest


def load_adapter_set(folder: str | Path, dtype: str = "float32",
                     trust_remote_code: bool = False):
    """The base model with every culture's adapter loaded (unmerged); ``.culture_adapters``
    maps culture -> adapter name."""
    from peft import PeftModel

    manifest = read_adapter_set(folder)
    base = load_model(manifest["base_model"], dtype, trust_remote_code)
    cultures = list(manifest["adapters"])
    model = PeftModel.from_pretrained(base, manifest["adapters"][cultures[0]],
                                      adapter_name=adapter_name(cultures[0]))
    for culture in cultures[1:]:
        model.load_adapter(manifest["adapters"][culture], adapter_name=adapter_name(culture))
    model.culture_adapters = {c: adapter_name(c) for c in cultures}
    model.eval()
    return model


def routed(model, routes: Sequence[str | None], run: Callable[[list[int]], list]) -> list:
    """Run ``run(indices)`` once per culture in ``routes`` with that culture's adapter active
    (None: adapters off) and put the results back in request order."""
    known = getattr(model, "culture_adapters", {})
    unknown = sorted({r for r in routes if r is not None and r not in known})
    if unknown:
        raise ConfigError(f"no adapter for culture {unknown[0]!r} in this adapter set (has "
                          f"{', '.join(known) or 'none'})", field="spa.cultures")
    results: list = [None] * len(routes)
    for route in dict.fromkeys(routes):
        indices = [i for i, r in enumerate(routes) if r == route]
        if route is None:
            with model.disable_adapter():
                outputs = run(indices)
        else:
            model.set_adapter(known[route])
            outputs = run(indices)
        for i, out in zip(indices, outputs):
            results[i] = out
    return results
