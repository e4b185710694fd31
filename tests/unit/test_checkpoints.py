"""Checkpoints are written whole, and a damaged one is detected and skipped (issue 10,
"Storage problems"): the manifest, the PPO controller's latest_checkpoint, a failed write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from culture_rl.core.checkpoints import (MANIFEST, CheckpointError, build_manifest, latest_complete,
                                    prune, verify_manifest, write_checkpoint, write_manifest)
from tests.support.mounts import tmpfs

STATE = "controller.json"


def fake_checkpoint(folder: Path, step: int, shard_bytes: int = 100_000) -> Path:
    """What the PPO controller writes: DeepSpeed shards, its tag file, controller.json."""
    def write(partial: Path) -> None:
        (partial / "policy" / "state").mkdir(parents=True)
        (partial / "policy" / "state" / "mp_rank_00_model_states.pt").write_bytes(
            b"w" * shard_bytes)
        (partial / "policy" / "latest").write_text("state")
        (partial / STATE).write_text(json.dumps({"step": step, "kl": {"coef": 0.1}}))

    return write_checkpoint(folder / f"step_{step:06d}", write)


def test_manifest_lists_sizes_and_hashes_the_small_files(tmp_path):
    ckpt = fake_checkpoint(tmp_path, 1)
    manifest = json.loads((ckpt / MANIFEST).read_text())
    files = manifest["files"]
    assert set(files) == {"policy/state/mp_rank_00_model_states.pt", "policy/latest", STATE}
    assert files["policy/state/mp_rank_00_model_states.pt"] == {"size": 100_000}  # not hashed
    assert "sha256" in files[STATE] and "sha256" in files["policy/latest"]
    assert build_manifest(ckpt) == manifest and verify_manifest(ckpt, (STATE,)) is None
    assert not ckpt.with_name(ckpt.name + ".partial").exists()


@pytest.mark.parametrize("damage, problem", [
    (lambda c: (c / "policy/state/mp_rank_00_model_states.pt").write_bytes(b"w" * 4096),
     "mp_rank_00_model_states.pt is 4096 bytes, 100000 when written (truncated?)"),
    (lambda c: (c / "policy/latest").unlink(), "policy/latest is missing"),
    (lambda c: (c / MANIFEST).unlink(), "no manifest.json"),
    (lambda c: (c / MANIFEST).write_text('{"files": '), "manifest.json unreadable"),
    (lambda c: (c / STATE).write_text((c / STATE).read_text().replace("0.1", "0.9")),
     "controller.json differs from what was written (sha256)"),
], ids=["truncated", "missing-file", "no-manifest", "bad-manifest", "changed-state"])
def test_verify_names_the_damage(tmp_path, damage, problem):
    ckpt = fake_checkpoint(tmp_path, 1)
    damage(ckpt)
    assert problem in verify_manifest(ckpt, (STATE,))


def test_a_manifest_without_the_required_state_is_incomplete(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "weights.pt").write_bytes(b"x")
    write_manifest(tmp_path / "c")
    assert verify_manifest(tmp_path / "c", (STATE,)) == (
        "controller.json is not in its manifest.json")


def test_latest_checkpoint_skips_a_truncated_one_with_one_warning(tmp_path, capsys):
    from culture_rl.rl.runtime import latest_checkpoint

    folder = tmp_path / "checkpoints"
    first, second = fake_checkpoint(folder, 1), fake_checkpoint(folder, 2)
    (folder / "step_000003.partial").mkdir()  # a write that never finished: not even looked at
    assert latest_checkpoint(folder) == second and capsys.readouterr().out == ""
    shard = second / "policy" / "state" / "mp_rank_00_model_states.pt"
    shard.write_bytes(shard.read_bytes()[:5000])
    assert latest_checkpoint(folder) == first
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "warning" in out and str(second) in out and "truncated" in out
    (first / MANIFEST).unlink()
    assert latest_checkpoint(folder) is None
    assert latest_complete(tmp_path / "none") is None


def test_prune_keeps_the_new_one_and_the_newest_complete_fallback(tmp_path):
    folder = tmp_path / "checkpoints"
    one, two, three = (fake_checkpoint(folder, s) for s in (1, 2, 3))
    (two / STATE).unlink()  # damaged: keeping it as the fallback would leave none
    prune(folder, keep=three, required=(STATE,))
    assert sorted(p.name for p in folder.iterdir()) == [one.name, three.name]


def test_a_failing_write_removes_the_partial_folder_and_keeps_the_previous(tmp_path):
    folder = tmp_path / "checkpoints"
    first = fake_checkpoint(folder, 1)

    def write(partial: Path) -> None:
        (partial / "half.pt").write_bytes(b"x" * 10)
        raise RuntimeError("saving policy did not finish within 5 s")

    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*step_000002: "
                                              r"saving policy did not finish within 5 s; "
                                              r".* free there"):
        write_checkpoint(folder / "step_000002", write)
    assert sorted(p.name for p in folder.iterdir()) == [first.name]
    assert latest_complete(folder, required=(STATE,)) == first


def test_full_disk_while_writing_a_checkpoint(tmp_path):
    """ENOSPC for real (a 256 KiB tmpfs): a clear error naming the checkpoint and the reason,
    no .partial folder, and the previous checkpoint is still the one to resume from."""
    with tmpfs(tmp_path / "disk", size="256k") as disk:
        folder = disk / "checkpoints"
        first = fake_checkpoint(folder, 1, shard_bytes=20_000)
        with pytest.raises(CheckpointError) as failure:
            fake_checkpoint(folder, 2, shard_bytes=400_000)
        message = str(failure.value)
        assert str(folder / "step_000002") in message and "no space left on device" in message
        assert sorted(p.name for p in folder.iterdir()) == [first.name]
        assert latest_complete(folder, required=(STATE,)) == first


def test_torch_save_on_a_full_disk_is_reported_with_the_free_space(tmp_path):
    """torch.save (DeepSpeed's shards) says "unexpected pos ..." on ENOSPC, with no errno: the
    message adds the free space, which does say it."""
    torch = pytest.importorskip("torch")
    with tmpfs(tmp_path / "disk", size="128k") as disk:
        def write(partial: Path) -> None:
            torch.save({"w": torch.zeros(100_000)}, partial / "model_states.pt")

        with pytest.raises(CheckpointError, match=r"step_000001: .*; 0 B free there"):
            write_checkpoint(disk / "step_000001", write)
        assert list(disk.iterdir()) == []


def test_publish_export_replaces_the_old_export_and_marks_the_new_one_finished(tmp_path):
    from culture_rl.core.checkpoints import FINISHED, publish_export

    target = tmp_path / "export"
    target.mkdir()
    (target / "old.bin").write_text("old")
    partial = tmp_path / "export.partial"
    partial.mkdir()
    (partial / "model.bin").write_text("new")
    assert publish_export(partial, target, {"stage": "sft", "global_step": 7}) == target
    assert not partial.exists() and sorted(p.name for p in target.iterdir()) == [
        FINISHED, "model.bin"]
    assert json.loads((target / FINISHED).read_text("utf-8"))["global_step"] == 7
