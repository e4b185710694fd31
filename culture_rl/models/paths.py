"""Where a model setting points: a model folder, a stage's export folder, a CALM export or a
local Hugging Face name."""

from __future__ import annotations

from pathlib import Path

from culture_rl.core.errors import ConfigError
from culture_rl.models.calm_policy import is_calm_export
from culture_rl.models.loading import check_available


def resolve_policy_path(path: str, field: str = "ppo.policy_path") -> str:
    """A model folder, an SFT ``export`` folder (its merged ``model/``, else ``adapter/``) or a
    local Hugging Face name."""
    folder = Path(path).expanduser()
    for calm in (folder, folder / "model"):  # a CALM export is served as a whole
        if is_calm_export(calm):
            return str(calm.resolve())
    for candidate in (folder / "model", folder / "adapter"):
        if (candidate / "config.json").is_file() or (candidate / "adapter_config.json").is_file():
            return str(candidate.resolve())
    try:
        check_available(path)
    except ConfigError as err:
        raise ConfigError(err.reason, field=field) from None
    return str(folder.resolve()) if folder.exists() else path
