"""Checkpoint folders that are either whole or ignored (the PPO controller's checkpoints).

A checkpoint is written as ``<name>.partial`` and renamed when done, so a crash mid-write never
leaves a folder that looks finished. That does not cover a folder that is damaged *after* the
rename (a copy between file systems cut short, a lost NFS write, someone deleting a shard) and
it tells a reader nothing about which files belong. So the last file written before the rename is
``manifest.json``: every file's size, and the sha256 of the small ones (``controller.json`` with
the data position and KL state, DeepSpeed's ``latest`` tag, configs) — hashing multi-GB shards
on every save would cost more than it guards, and a truncated shard shows in its size.

:func:`latest_complete` checks the manifest and skips a damaged checkpoint with one warning line,
falling back to the previous one. :func:`write_checkpoint` removes the ``.partial`` folder on any
failure and raises :class:`CheckpointError` naming the checkpoint, the reason and the free space.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

from culture_rl.core.errors import CultureRLError

MANIFEST = "manifest.json"
PARTIAL = ".partial"
FINISHED = "finished.json"  # what every finished stage export holds; readers look for it
HASH_UP_TO_BYTES = 64 * 1024


class CheckpointError(CultureRLError):
    """A checkpoint could not be written; the message names it and says why."""


# ------------------------------------------------------------------------ manifest (pure)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_manifest(folder: Path, fsync: bool = False) -> dict:
    """Size of every file under ``folder`` (relative POSIX paths), sha256 of the small ones.
    ``fsync``: also flush each file to stable storage, so the rename that follows cannot
    outlive the data after a power loss (DeepSpeed and torch.save do not fsync)."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel == MANIFEST:
            continue
        if fsync:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        size = path.stat().st_size
        files[rel] = {"size": size, **({"sha256": _sha256(path)}
                                       if size <= HASH_UP_TO_BYTES else {})}
    return {"version": 1, "files": files}


def write_manifest(folder: Path, fsync: bool = True) -> Path:
    """``folder/manifest.json``, itself written whole (tmp + fsync + rename)."""
    manifest = build_manifest(folder, fsync=fsync)
    target, tmp = folder / MANIFEST, folder / (MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)
        handle.flush()
        if fsync:
            os.fsync(handle.fileno())
    tmp.replace(target)
    return target


def verify_manifest(folder: Path, required: tuple[str, ...] = ()) -> str | None:
    """None when ``folder`` holds every file its manifest lists, each whole; else the first
    problem, in words. ``required`` files must be listed in the manifest too."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text("utf-8"))
        files = manifest["files"]
    except FileNotFoundError:
        return f"no {MANIFEST} (not written to the end)"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{MANIFEST} unreadable ({type(err).__name__})"
    for name in required:
        if name not in files:
            return f"{name} is not in its {MANIFEST}"
    for rel, entry in files.items():
        path = folder / rel
        try:
            size = path.stat().st_size
        except OSError:
            return f"{rel} is missing"
        if size != entry.get("size"):
            return f"{rel} is {size} bytes, {entry.get('size')} when written (truncated?)"
        if "sha256" in entry and _sha256(path) != entry["sha256"]:
            return f"{rel} differs from what was written (sha256)"
    return None


# -------------------------------------------------------------------------- the folders


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr, flush=True)


def complete_checkpoints(folder: Path, pattern: str = "step_*",
                         required: tuple[str, ...] = (),
                         warn: Callable[[str], None] | None = _warn) -> list[Path]:
    """The checkpoints in ``folder`` whose manifest checks out, oldest first (names sort by
    step: ``step_000020``). Each damaged one is reported by ``warn`` in one line, naming it."""
    if not folder.is_dir():
        return []
    complete = []
    for path in sorted(p for p in folder.glob(pattern)
                       if p.is_dir() and not p.name.endswith(PARTIAL)):
        problem = verify_manifest(path, required)
        if problem is None:
            complete.append(path)
        elif warn is not None:
            warn(f"skipping checkpoint {path}: {problem}")
    return complete


def latest_complete(folder: Path, pattern: str = "step_*", required: tuple[str, ...] = (),
                    warn: Callable[[str], None] | None = _warn) -> Path | None:
    done = complete_checkpoints(folder, pattern, required, warn)
    return done[-1] if done else None


def _format_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _reason(err: BaseException, where: Path) -> str:
    # Ray re-raises an actor's exception as RayTaskError(<its type>), with the original in
    # .cause; torch.save reports a full disk as a RuntimeError with no errno, so the free space
    # is added: "0 B free" says what the message does not.
    cause = getattr(err, "cause", None) or err
    if isinstance(cause, OSError) and cause.strerror:
        text = cause.strerror[:1].lower() + cause.strerror[1:]
        if cause.filename:
            text += f" ({cause.filename})"
    else:
        text = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
    try:
        text += f"; {_format_bytes(shutil.disk_usage(where).free)} free there"
    except OSError:
        pass
    return text


def write_checkpoint(final: Path, write: Callable[[Path], None]) -> Path:
    """Write the checkpoint ``final`` whole: ``write(folder)`` fills a ``.partial`` folder, the
    manifest goes in last, then the rename. On any failure the ``.partial`` folder is removed
    (never a half checkpoint that a later run could mistake for one) and, for an Exception,
    :class:`CheckpointError` names ``final`` and the reason; the previous checkpoint stays."""
    partial = final.with_name(final.name + PARTIAL)
    try:
        if partial.exists():
            shutil.rmtree(partial)  # left by a run that died while writing this step
        partial.mkdir(parents=True)
        write(partial)
        write_manifest(partial)
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        _fsync_dir(final.parent)
    except BaseException as err:
        reason = _reason(err, final.parent) if isinstance(err, Exception) else ""
        shutil.rmtree(partial, ignore_errors=True)
        if not isinstance(err, Exception) or isinstance(err, CheckpointError):
            raise  # Ctrl-C and friends: cleaned up, passed on as they are
        raise CheckpointError(f"could not write checkpoint {final}: {reason}") from err
    return final


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX: a directory entry is flushed with its folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some network file systems refuse fsync on a folder; the data files are synced
    finally:
        os.close(fd)


def prune(folder: Path, keep: Path, pattern: str = "step_*", required: tuple[str, ...] = ()
          ) -> None:
    """Remove every checkpoint but ``keep`` and the newest *complete* one before it, so a
    damaged older folder can never be what is kept to fall back on."""
    older = [p for p in complete_checkpoints(folder, pattern, required, warn=None) if p != keep]
    fallback = older[-1] if older else None
    for path in folder.glob(pattern):
        if path.is_dir() and path not in (keep, fallback) and not path.name.endswith(PARTIAL):
            shutil.rmtree(path, ignore_errors=True)


def publish_export(partial: Path, target: Path, finished: dict) -> Path:
    """Finish a stage's export: write ``finished.json`` into the fully written ``partial``
    folder, then put it in ``target``'s place (a previous export there is replaced). Readers
    trust a folder only when it holds ``finished.json``, so a crash before the rename leaves
    either the old export or none, never a half-written one."""
    (partial / FINISHED).write_text(json.dumps(finished, indent=2), "utf-8")
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)
    return target
