"""``culture-rl submit`` and ``culture-rl jobs``: Ray's ``JobSubmissionClient`` with our
workflows, config checks and exit codes.

A submission is checked here before anything reaches the cluster: the workflow exists, the config
loads (with its overrides), it lies inside the uploaded working dir (the job reads it there), and
its ``run.storage_path`` is absolute (a relative one would land in the job's temporary copy of the
working dir and vanish with it).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import yaml

from culture_rl.core.errors import ConfigError, CultureRLError
from culture_rl.jobs.workflows import WORKFLOWS, entrypoint
from culture_rl.core.redact import redact_text
from culture_rl.config import load_config

DEFAULT_RUNTIME_ENV = Path(__file__).resolve().parents[2] / "ray_jobs" / "runtime_env.yaml"
DEFAULT_ADDRESS = "http://127.0.0.1:8265"


class JobError(CultureRLError):
    """The cluster could not be reached, or a job did not end as asked (exit code 1)."""


def dashboard_address(address: str | None) -> str:
    """``--address``, else ``RAY_API_SERVER_ADDRESS`` / an http ``RAY_ADDRESS``, else the local
    head's dashboard."""
    for candidate in (address, os.environ.get("RAY_API_SERVER_ADDRESS"),
                      os.environ.get("RAY_ADDRESS")):
        if candidate:
            if not candidate.startswith(("http://", "https://")):
                if candidate is address:
                    raise ConfigError(f"{redact_text(candidate)!r} is not the dashboard's "
                                      "http address (e.g. http://HEAD:8265)", field="--address")
                continue  # a GCS address in RAY_ADDRESS is for ray.init, not for jobs
            return candidate.rstrip("/")
    return DEFAULT_ADDRESS


def enable_token_auth() -> None:
    """Ray 2.60 clusters require a token by default, but clients only send one when
    ``RAY_AUTH_MODE=token``; turn it on when a token is at hand and the user said nothing."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    token_path = os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"
    if os.environ.get("RAY_AUTH_TOKEN") or Path(token_path).is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def connect(address: str | None):
    from ray.job_submission import JobSubmissionClient

    url = dashboard_address(address)
    enable_token_auth()
    try:
        return JobSubmissionClient(url)
    except Exception as err:  # noqa: BLE001 -- Ray raises bare ConnectionError/RuntimeError
        # Redacted: an address may carry user:password@ (a proxy in front of the dashboard).
        raise JobError(f"cannot reach the Ray dashboard at {redact_text(url)}: "
                       f"{_first_line(err)}. {_hint(err)}") from err


def _first_line(err: BaseException) -> str:
    """What we print of a Ray error: its first line, without credentials (Ray's messages
    repeat the address they were given)."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0][:300].rstrip(".")
    return redact_text(line)


def _hint(err: BaseException) -> str:
    text = str(err).lower()
    if "401" in text or "403" in text or "token" in text or "unauthor" in text:
        return ("The cluster uses token authentication: put the head's token "
                "(`ray get-auth-token` on the head) in RAY_AUTH_TOKEN or ~/.ray/auth_token.")
    return ("Is the head running? For a cloud cluster open a tunnel first: "
            "`ray dashboard cluster/aws-gpu.yaml`.")


def load_runtime_env(path: str | Path | None, working_dir: str | Path) -> dict:
    path = Path(path or DEFAULT_RUNTIME_ENV)
    try:
        env = yaml.safe_load(path.read_text("utf-8")) or {}
    except OSError as err:
        raise ConfigError(f"cannot read the runtime env: {err.strerror}", path=path) from err
    except yaml.YAMLError as err:
        raise ConfigError(f"not valid YAML: {_first_line(err)}", path=path) from err
    if not isinstance(env, dict):
        raise ConfigError("a runtime env is a mapping (working_dir, excludes, env_vars, pip)",
                          path=path)
    from ray.runtime_env import RuntimeEnv

    # Ray passes unknown fields on to runtime-env plugins, so a typo would be silently ignored.
    unknown = sorted(k for k in env if k not in RuntimeEnv.known_fields)
    if unknown:
        raise ConfigError(f"unknown runtime env field(s) {', '.join(unknown)}; Ray knows "
                          f"{', '.join(sorted(f for f in RuntimeEnv.known_fields if f[0] != '_'))}",
                          path=path)
    env = {**env, "working_dir": str(Path(working_dir).resolve())}
    try:
        RuntimeEnv(**env)  # Ray's own validation: unknown fields, wrong types
    except Exception as err:  # noqa: BLE001 -- Ray raises TypeError/ValueError/RuntimeError
        raise ConfigError(_first_line(err), path=path) from err
    return env


def _config_in_working_dir(config_path: str, working_dir: Path) -> str:
    resolved = Path(config_path).resolve()
    if not resolved.is_relative_to(working_dir.resolve()):
        raise ConfigError(f"{config_path} is outside the working dir {working_dir} that is "
                          "uploaded to the cluster; the job could not read it", field="--config")
    return resolved.relative_to(working_dir.resolve()).as_posix()


def prepare_submission(workflow: str, config_path: str, overrides: list[str],
                       working_dir: str | Path = ".", runtime_env: str | Path | None = None
                       ) -> dict:
    """Everything ``JobSubmissionClient.submit_job`` needs, checked locally first."""
    if workflow not in WORKFLOWS:
        raise ConfigError(f"unknown workflow {workflow!r}; one of {', '.join(WORKFLOWS)}",
                          field="workflow")
    working_dir = Path(working_dir)
    relative_config = _config_in_working_dir(config_path, working_dir)
    config = load_config(config_path, overrides)
    if not Path(config.run.storage_path).is_absolute():
        raise ConfigError(f"{config.run.storage_path!r} is relative: a job would write it into "
                          "its temporary copy of the working dir; pass run.storage_path=<a "
                          "folder every node sees> (NFS mount, or a path on the head for a "
                          "one-node cluster)", field="run.storage_path")
    submission_id = f"culture-rl-{workflow}-{config.run.name}-{uuid.uuid4().hex[:6]}"
    return dict(entrypoint=entrypoint(workflow, relative_config, overrides),
                runtime_env=load_runtime_env(runtime_env, working_dir),
                submission_id=submission_id,
                metadata={"workflow": workflow, "run": config.run.name,
                          "config": relative_config, "run_dir": str(config.run_dir)})


def submit(client, submission: dict) -> str:
    try:
        return client.submit_job(**submission)
    except Exception as err:  # noqa: BLE001 -- Ray wraps HTTP failures in RuntimeError
        raise JobError(f"submission refused: {_first_line(err)}") from err


def follow_logs(client, job_id: str, out=sys.stdout) -> None:
    """Print the job's log as it grows until the job ends (Ray's websocket tail)."""
    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    try:
        asyncio.run(tail())
    except Exception as err:  # noqa: BLE001 -- a dropped websocket must not end the wait
        sys.stderr.write(f"culture-rl: the log stream of {job_id} broke off "
                         f"({_first_line(err)}); `culture-rl jobs logs {job_id}` has it all\n")


def wait_until_terminal(client, job_id: str, timeout_s: float = 600, poll_s: float = 1.0):
    deadline = time.time() + timeout_s
    while True:
        info = client.get_job_info(job_id)
        if info.status.is_terminal():
            return info
        if time.time() > deadline:
            raise JobError(f"job {job_id} still {info.status} after {timeout_s:.0f} s")
        time.sleep(poll_s)


def exit_code_of(info) -> int:
    """The job's outcome as our exit code: the driver's own code when Ray has it (2: bad input,
    1: failed run), 0 for SUCCEEDED, 1 for FAILED or STOPPED without one."""
    if info.status.value == "SUCCEEDED":
        return 0
    code = getattr(info, "driver_exit_code", None)
    return code if code in (1, 2) else 1


def describe(info) -> str:
    lines = [f"submission id: {info.submission_id}", f"status:        {info.status.value}",
             f"entrypoint:    {info.entrypoint}"]
    if info.message:
        lines.append(f"message:       {' '.join(str(info.message).split())[:500]}")
    for label, millis in (("started", info.start_time), ("ended", info.end_time)):
        if millis:
            lines.append(f"{label + ':':<15}"
                         f"{datetime.fromtimestamp(millis / 1000):%Y-%m-%d %H:%M:%S}")
    if getattr(info, "driver_exit_code", None) is not None:
        lines.append(f"exit code:     {info.driver_exit_code}")
    for key, value in sorted((info.metadata or {}).items()):
        lines.append(f"{key + ':':<15}{value}")
    return "\n".join(lines)


def table(jobs) -> str:
    rows = [("SUBMISSION ID", "STATUS", "STARTED", "WORKFLOW", "RUN")]
    for info in sorted(jobs, key=lambda j: j.start_time or 0):
        meta = info.metadata or {}
        started = (f"{datetime.fromtimestamp(info.start_time / 1000):%m-%d %H:%M:%S}"
                   if info.start_time else "-")
        rows.append((info.submission_id or info.job_id or "-", info.status.value, started,
                     meta.get("workflow", "-"), meta.get("run", "-")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows)


def job_info(client, job_id: str):
    try:
        return client.get_job_info(job_id)
    except Exception as err:  # noqa: BLE001 -- Ray raises RuntimeError for unknown ids
        raise ConfigError(f"no job {job_id!r} on this cluster ({_first_line(err)}); "
                          "`culture-rl jobs list` shows the ids", field="SUBMISSION_ID") from err
