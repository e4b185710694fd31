"""Shared body of the ``ray_jobs.<workflow>`` entrypoints: run the workflow's culture-rl command
with this process's arguments and exit with its code (2: bad input, 1: the run failed), which
Ray reports as the job's driver exit code."""

from __future__ import annotations

import os
import sys


def run(workflow: str) -> None:
    from culture_rl.cli import main
    from culture_rl.jobs.workflows import WORKFLOWS

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main([WORKFLOWS[workflow].command, *sys.argv[1:]]))
