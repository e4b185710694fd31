"""The run's storage is checked before any Ray work (issue 10, "Storage problems"): a storage
path that is no folder, read-only or full is one ConfigError on run.storage_path, exit 2 from
the CLI, and no run folder is left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from culture_rl.cli import main
from culture_rl.core.errors import ConfigError
from culture_rl.core.storage import check_storage
from tests.support.mounts import fill, tmpfs

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")


def test_writable_storage_passes_and_keeps_only_the_run_folder(tmp_path):
    run_dir = tmp_path / "runs" / "q"
    assert check_storage(run_dir) == run_dir
    assert run_dir.is_dir() and list(run_dir.iterdir()) == []  # the probe is gone


def test_storage_path_under_a_regular_file(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError) as failure:
        check_storage(tmp_path / "file" / "runs" / "q")
    err = failure.value
    assert err.field == "run.storage_path" and "not a directory" in str(err)
    assert str(tmp_path / "file" / "runs" / "q") in str(err)


def test_full_disk_is_refused_before_anything_starts(tmp_path):
    with tmpfs(tmp_path / "disk") as disk:
        fill(disk)
        with pytest.raises(ConfigError, match="no space left on device") as failure:
            check_storage(disk / "runs" / "q")
        assert failure.value.field == "run.storage_path" and str(disk / "runs" / "q") in str(
            failure.value)
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # nothing left behind


def test_read_only_file_system(tmp_path):
    with tmpfs(tmp_path / "ro", read_only=True) as ro:
        with pytest.raises(ConfigError, match="read-only file system"):
            check_storage(ro / "runs" / "q")


@pytest.mark.parametrize("command", ["sft", "ppo", "eval", "pretrain", "sweep"])
def test_cli_checks_storage_first_and_leaves_no_run_folder(tmp_path, capsys, command):
    (tmp_path / "file").write_text("not a folder")
    code = main([command, "--config", QUICKSTART, f"run.storage_path={tmp_path}/file/runs"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "run.storage_path" in err and "not a directory" in err


def test_cli_on_a_full_disk_exits_2_and_removes_the_run_folder(tmp_path, capsys):
    with tmpfs(tmp_path / "disk") as disk:
        fill(disk)
        code = main(["demo", "--config", QUICKSTART, f"run.storage_path={disk}/runs"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1
        assert "run.storage_path" in err and "no space left on device" in err
        assert not (disk / "runs").exists()
