"""`culture-rl submit` / `jobs`: what is checked on this machine before a job reaches a cluster,
the runtime env files, and the gauge updates every emitter shares. (Against a real head:
tests/e2e/test_jobs.py.)"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from culture_rl.cli import main
from culture_rl.distributed.metrics import gauge_updates
from culture_rl.core.errors import ConfigError
from culture_rl.jobs import client
from culture_rl.jobs.workflows import WORKFLOWS, entrypoint

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def test_prepare_submission_builds_the_entrypoint_and_runtime_env(in_repo, tmp_path):
    sub = client.prepare_submission("align_sft", "configs/quickstart.yaml",
                                    [f"run.storage_path={tmp_path}", "run.name=a"])
    assert sub["entrypoint"] == (f"python -m ray_jobs.align_sft --config configs/quickstart.yaml "
                                 f"run.storage_path={tmp_path} run.name=a")
    env = sub["runtime_env"]
    assert env["working_dir"] == str(REPO) and ".venv/" in env["excludes"]
    assert env["env_vars"]["TOKENIZERS_PARALLELISM"] == "false"
    assert sub["metadata"] == {"workflow": "align_sft", "run": "a", "config":
                               "configs/quickstart.yaml", "run_dir": str(tmp_path / "a")}
    assert re.fullmatch(r"culture-rl-align_sft-a-[0-9a-f]{6}", sub["submission_id"])


def test_overrides_with_spaces_are_quoted_for_the_shell():
    assert entrypoint("eval", "configs/x.yaml", ["run.name=x", "data.culture=New Land"]) == (
        "python -m ray_jobs.eval --config configs/x.yaml run.name=x 'data.culture=New Land'")


@pytest.mark.parametrize("args, field", [
    (("nope", "configs/quickstart.yaml", ["run.storage_path=/tmp/x"]), "workflow"),
    (("align_sft", "configs/quickstart.yaml", []), "run.storage_path"),
    (("align_sft", "configs/quickstart.yaml", ["run.storage_path=/tmp/x", "sft.epochs=-1"]),
     "sft.epochs"),
    (("align_sft", "/etc/hostname", ["run.storage_path=/tmp/x"]), "--config"),
])
def test_bad_submissions_are_refused_before_any_cluster_is_contacted(in_repo, args, field):
    with pytest.raises(ConfigError) as err:
        client.prepare_submission(*args)
    assert field in str(err.value)


def test_submit_cli_bad_input_exits_2_with_one_line(in_repo, capsys):
    # No head listens on port 1: the config is refused before the address is ever used.
    code = main(["submit", "align_ppo", "--address", "http://127.0.0.1:1",
                 "--config", "configs/quickstart.yaml", "ppo.kl_coef=-3",
                 "run.storage_path=/tmp/nowhere"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "ppo.kl_coef" in err


def test_unreachable_head_exits_1_with_a_hint(in_repo, capsys):
    code = main(["jobs", "list", "--address", "http://127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert "cannot reach the Ray dashboard at http://127.0.0.1:1" in err and "tunnel" in err


def test_address_must_be_the_dashboards_http_url(monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a GCS address: not for jobs
    assert client.dashboard_address(None) == client.DEFAULT_ADDRESS
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265/")
    assert client.dashboard_address(None) == "http://head:8265"
    assert client.dashboard_address("https://x:1") == "https://x:1"
    with pytest.raises(ConfigError, match="--address"):
        client.dashboard_address("head:8265")


def test_token_auth_is_switched_on_only_when_a_token_exists(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    client.enable_token_auth()
    assert "RAY_AUTH_MODE" not in os.environ
    (tmp_path / "token").write_text("abc")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    client.enable_token_auth()
    assert os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the user's choice stands
    client.enable_token_auth()
    assert os.environ["RAY_AUTH_MODE"] == "disabled"


def test_runtime_env_files_are_valid_and_the_pip_one_lists_our_dependencies(tmp_path):
    for name in ("runtime_env.yaml", "runtime_env_pip.yaml"):
        env = client.load_runtime_env(REPO / "ray_jobs" / name, REPO)
        assert {".venv/", "runs/", ".git/"} <= set(env["excludes"])
    pip = yaml.safe_load((REPO / "ray_jobs" / "runtime_env_pip.yaml").read_text())["pip"]
    listed = {re.split(r"[<>=\[]", p)[0] for p in pip["packages"]}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    # Ray, numpy and pyyaml come with the Ray image.
    needed = {re.split(r"[<>=\[]", d)[0] for d in project} - {"ray", "numpy", "pyyaml"}
    assert needed <= listed, needed - listed
    bad = tmp_path / "env.yaml"
    bad.write_text("working_dir: .\nnot_a_field: 1\n")
    with pytest.raises(ConfigError, match="env.yaml"):
        client.load_runtime_env(bad, REPO)


def test_every_workflow_has_an_entrypoint_module_running_its_command():
    for workflow in WORKFLOWS.values():
        source = (REPO / "ray_jobs" / f"{workflow.name}.py").read_text()
        assert f'run("{workflow.name}")' in source
    from culture_rl.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    assert {w.command for w in WORKFLOWS.values()} <= set(commands)


def test_gauge_updates_tag_cultures_and_skip_what_is_not_a_number():
    updates = gauge_updates({"loss": 1.5, "reward_mean/Avalor": -0.25, "eval_p@5/Borenia": 0.5,
                             "note": "text", "bad": float("nan"), "flag": True, "samples": 8},
                            {"run": "r", "workflow": "ppo"})
    assert updates == [
        ("culture_rl_loss", {"culture": "all", "run": "r", "workflow": "ppo"}, 1.5),
        ("culture_rl_reward_mean", {"culture": "Avalor", "run": "r", "workflow": "ppo"}, -0.25),
        ("culture_rl_eval_p_5", {"culture": "Borenia", "run": "r", "workflow": "ppo"}, 0.5),
        ("culture_rl_samples", {"culture": "all", "run": "r", "workflow": "ppo"}, 8.0)]


def test_job_status_lines_align_their_values():
    from types import SimpleNamespace

    from ray.job_submission import JobStatus

    info = SimpleNamespace(submission_id="culture-rl-x", status=JobStatus.FAILED, entrypoint="e",
                           message="bad\n input", start_time=1795453865040,
                           end_time=1795453881642, driver_exit_code=2,
                           metadata={"workflow": "align_sft"})
    lines = client.describe(info).splitlines()
    assert [line[:15].split(":")[0] for line in lines] == [
        "submission id", "status", "entrypoint", "message", "started", "ended", "exit code",
        "workflow"]
    assert all(line[14] == " " and line[15] != " " for line in lines), lines
    assert "message:       bad input" in lines
    assert client.exit_code_of(info) == 2
