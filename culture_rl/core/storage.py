"""Is the run's storage writable? Asked once, before any Ray work starts.

Without this check a storage path under a regular file, on a read-only mount or on a full disk
fails minutes later, inside a Ray worker, as a traceback about some checkpoint file (torch even
reports a full disk as "unexpected pos 576 vs 534"). A probe file written, fsynced and removed in
the run folder turns all of these into one :class:`ConfigError` naming the folder and the
operating system's reason, while nothing has started yet.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from culture_rl.core.errors import ConfigError

FIELD = "run.storage_path"
# Big enough that a file system with no room left refuses it (tmpfs and ext4 allocate whole
# pages/blocks), small enough to cost nothing. It cannot promise room for a checkpoint: only
# that the folder exists, is a folder, is writable and is not already full.
PROBE_BYTES = 64 * 1024


def outermost_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what creating it makes)."""
    missing = None
    for folder in [path, *path.parents]:
        if folder.exists():
            break
        missing = folder
    return missing


def os_reason(err: OSError) -> str:
    """``No space left on device`` -> ``no space left on device`` (errno text, one line)."""
    text = err.strerror or str(err) or type(err).__name__
    return text[:1].lower() + text[1:]


def check_storage(run_dir: str | Path) -> Path:
    """Create ``run_dir`` if needed and prove a file can be written there (write, fsync,
    remove). Any OSError becomes ``ConfigError(..., field="run.storage_path")``; the folders
    this call created are removed again, so a failed check leaves nothing behind."""
    run_dir = Path(run_dir)
    probe = run_dir / f".write_probe.{os.getpid()}"
    created = None
    try:
        created = outermost_missing(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            # os.write, not a buffered file: a full disk must fail here, not in a silent flush.
            view = memoryview(b"\0" * PROBE_BYTES)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)  # NFS and some FUSE mounts report a full quota only now
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as err:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        where = f" ({err.filename})" if err.filename and Path(err.filename) != run_dir else ""
        raise ConfigError(f"cannot write the run folder {run_dir}{where}: {os_reason(err)}",
                          field=FIELD) from None
    return run_dir
