"""Secrets never reach what a run writes (config dumps, metrics.jsonl, eval.json) or prints, and
the shipped configs hold none (issue 10, "Security")."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from culture_rl.cli import main
from culture_rl.config import config_to_yaml, load_config, write_run_config
from culture_rl.distributed.metrics import StepMetrics
from culture_rl.core.redact import (REDACTED, literal_secrets, looks_secret, redact, redact_text,
                               text_secrets)

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")
ADDRESS = "resources.address=ray://user:hunter2@head:10001"


def test_secret_looking_keys_and_the_lm_words_that_are_not():
    for key in ("token", "hf_token", "RAY_AUTH_TOKEN", "api_key", "apiKey", "API-KEY", "apikey",
                "access_key", "aws_secret_access_key", "private_key", "ssh_private_key",
                "credentials", "Credential", "auth", "Authorization", "password", "db_passwd",
                "clientSecret", "accessToken"):
        assert looks_secret(key), key
    # Language models count tokens; a path or a mode only locates or describes a secret.
    for key in ("max_new_tokens", "tokens_per_s", "num_input_tokens_seen", "tokenizer",
                "pad_token_id", "TOKENIZERS_PARALLELISM", "RAY_AUTH_MODE", "auth_token_path",
                "secret_name", "key", "eval_p@5", "monkey", "mean_token_accuracy"):
        assert not looks_secret(key), key


def test_redact_masks_keys_urls_and_lists_and_leaves_the_input_alone():
    record = {
        "step": 3, "loss": 0.5, "HF_Token": "hf_abcdef", "unset_password": None,
        "resources": {"address": "ray://user:hunter2@head:10001", "num_workers": 2,
                      "auth": {"user": "me", "pass": "x"}},
        "mirrors": ["https://bob:pw@pypi.example/simple", "https://pypi.org/simple",
                    {"apiKey": 123}],
        "cmd": ("RAY_AUTH_TOKEN=abc ray start", "http://head:8265/path@x"),
        "note": "see https://tok123@github.com/o/r.git?access_token=zz&ref=main",
    }
    before = json.dumps(record, default=list)
    out = redact(record)
    assert json.dumps(record, default=list) == before  # a copy: the caller's dict is unchanged
    assert out["step"] == 3 and out["loss"] == 0.5
    assert out["HF_Token"] == REDACTED and out["unset_password"] is None
    assert out["resources"] == {"address": "ray://head:10001", "num_workers": 2, "auth": REDACTED}
    assert out["mirrors"] == ["https://pypi.example/simple", "https://pypi.org/simple",
                              {"apiKey": REDACTED}]
    assert out["cmd"] == (f"RAY_AUTH_TOKEN={REDACTED} ray start", "http://head:8265/path@x")
    assert out["note"] == (f"see https://github.com/o/r.git?access_token={REDACTED}&ref=main")
    for secret in ("hf_abcdef", "hunter2", "bob:pw", "tok123", "=abc", "zz", "123"):
        assert secret not in json.dumps(out, default=list), secret
    # An unescaped '@' in the password goes too; an address without credentials is untouched.
    assert redact_text("ray://u:p@ss@host:1/a@b") == "ray://host:1/a@b"
    assert redact_text("ray://head:10001") == "ray://head:10001"


def test_config_dump_and_config_show_drop_url_credentials(tmp_path, capsys):
    config = load_config(QUICKSTART, [f"run.storage_path={tmp_path}", ADDRESS])
    assert config.resources.address == "ray://user:hunter2@head:10001"  # used as given
    written = write_run_config(config)
    text = written.read_text("utf-8")
    assert "hunter2" not in text and "user:" not in text
    assert "address: ray://head:10001" in text
    assert load_config(written).resources.address == "ray://head:10001"  # still reloadable
    # The evaluation harness stores config_to_yaml(config) in eval.json: the same redaction.
    assert "hunter2" not in config_to_yaml(config)

    assert main(["config", "show", "--config", QUICKSTART, ADDRESS]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "address: ray://head:10001" in out


def test_step_metrics_record_with_a_secret_looking_key_is_written_without_its_value(tmp_path):
    metrics = StepMetrics(tmp_path / "metrics.jsonl", "run", "ppo", export_to_ray=False)
    metrics.log(1, {"reward_mean": 0.25, "wandb_api_key": "k-123456",
                    "source": "s3://AKIA:wJalr@bucket/run"})
    line = (tmp_path / "metrics.jsonl").read_text("utf-8")
    assert "k-123456" not in line and "wJalr" not in line
    row = json.loads(line)
    assert row["reward_mean"] == 0.25 and row["wandb_api_key"] == REDACTED
    assert row["source"] == "s3://bucket/run"


def test_training_callbacks_write_redacted_records(tmp_path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from culture_rl.train.callbacks import ProgressLogger, append_jsonl

    path = tmp_path / "sft" / "metrics.jsonl"
    path.parent.mkdir()
    append_jsonl(path, {"step": 1, "hub": "https://me:s3cret@hf.example/x"})
    logger = ProgressLogger("sft", path)
    state = TrainerState(global_step=2, epoch=0.5, max_steps=4)
    logger.on_log(TrainingArguments(output_dir=str(tmp_path / "o"), report_to=[]), state,
                  TrainerControl(), logs={"loss": 1.5, "hf_token": 987654})
    text = path.read_text("utf-8")
    assert "s3cret" not in text and "987654" not in text
    rows = [json.loads(line) for line in text.splitlines()]
    assert rows[1]["loss"] == 1.5 and rows[1]["hf_token"] == REDACTED


def _shipped_files() -> list[Path]:
    folders = [REPO / "configs", REPO / "cluster", REPO / "ray_jobs"]
    return sorted(p for folder in folders for p in folder.rglob("*")
                  if p.suffix in (".yaml", ".yml", ".json") and p.is_file())


def test_the_scanner_finds_written_out_secrets():
    tree = {"env": [{"name": "HF_TOKEN", "value": "hf_abc"}, {"name": "X", "value": "1"},
                    {"name": "GH_TOKEN", "valueFrom": {"secretKeyRef": {"name": "gh"}}}],
            "token": "abc", "ok_token": "$HF_TOKEN", "path_token": "~/.ray/auth_token",
            "auth": {"ssh_user": "ubuntu", "ssh_private_key": "~/.ssh/key.pem"},
            "setup": ["RAY_AUTH_TOKEN=zz ray start", "TOKEN=$TOKEN ray start",
                      "pip install -i http://u:p@mirror/simple x"]}
    assert literal_secrets(tree) == ["env.0.HF_TOKEN", "token", "setup.0: RAY_AUTH_TOKEN=zz",
                                     "setup.2: http://u:p@"]
    assert text_secrets("# export RAY_AUTH_TOKEN=$(kubectl get secret x)") == []


@pytest.mark.parametrize("path", _shipped_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_configs_hold_no_literal_secret(path):
    """Credentials come from the environment or a file (RAY_AUTH_TOKEN, ~/.ray/auth_token,
    a Kubernetes Secret): no key that looks secret has a literal value, in the parsed file or
    in its comments."""
    text = path.read_text("utf-8")
    docs = [json.loads(text)] if path.suffix == ".json" else list(yaml.safe_load_all(text))
    found = [f for doc in docs for f in literal_secrets(doc)]
    found += [f"line {i}: {f}" for i, line in enumerate(text.splitlines(), 1)
              for f in text_secrets(line)]
    assert not found, f"{path}: secrets written out: {found}"


def test_ray_auth_token_is_read_only_from_the_environment_or_its_file(monkeypatch, tmp_path,
                                                                        capsys):
    """Only the job client and the local test cluster know where the token lives, both only
    check that it exists (Ray itself reads it), and switching token auth on prints nothing."""
    mentions = {p.relative_to(REPO).as_posix() for p in (REPO / "culture_rl").rglob("*.py")
                if re.search(r"auth_token|RAY_AUTH_TOKEN", p.read_text("utf-8"))}
    assert mentions <= {"culture_rl/jobs/client.py", "culture_rl/distributed/local_autoscaler.py",
                        "culture_rl/core/redact.py"}, mentions
    client_source = (REPO / "culture_rl" / "jobs" / "client.py").read_text("utf-8")
    assert "read_text" not in client_source.split("def enable_token_auth")[1].split("\ndef ")[0]

    from culture_rl.jobs import client

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "tok-hunter2-value")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "none"))
    client.enable_token_auth()
    assert os.environ["RAY_AUTH_MODE"] == "token"
    out, err = capsys.readouterr()
    assert "hunter2" not in out + err
    assert [k for k, v in os.environ.items() if "tok-hunter2" in v] == ["RAY_AUTH_TOKEN"]


def test_unreachable_dashboard_error_does_not_print_the_password(capsys):
    code = main(["jobs", "list", "--address", "http://admin:hunter2@127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 1 and "hunter2" not in err and "http://127.0.0.1:1" in err
