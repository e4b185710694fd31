"""The workflows a Ray job can run: each is a `culture-rl` command behind a
``python -m ray_jobs.<workflow>`` entrypoint (the ``job`` column of the command table,
:data:`culture_rl.commands.JOBS`), so a job and a local run share every line of code (config
loading, one-line errors and exit codes included)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from culture_rl.commands import COMMANDS, JOBS


@dataclass(frozen=True)
class Workflow:
    name: str     # the job's entrypoint module: ray_jobs/<name>.py
    command: str  # the culture-rl command it runs

    @property
    def help(self) -> str:
        """The command's own help line: one text for a command and its job."""
        return COMMANDS[self.command].help


WORKFLOWS = {name: Workflow(name, command) for name, command in JOBS.items()}


def entrypoint(workflow: str, config_path: str, overrides: list[str]) -> str:
    """The shell command a job runs on the cluster: ``python -m ray_jobs.<workflow> ...``."""
    args = ["python", "-m", f"ray_jobs.{workflow}", "--config", config_path, *overrides]
    return shlex.join(args)
