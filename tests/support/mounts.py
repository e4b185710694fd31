"""Real storage faults for tests: a tiny tmpfs (full disk, read-only file system).

No mocks: the code under test sees the operating system's own ENOSPC and EROFS, from the same
calls it makes on a real disk. Mounting needs root with CAP_SYS_ADMIN (CI containers and this
project's dev machines have it); elsewhere the tests that need it are skipped, saying why.
"""

from __future__ import annotations

import errno
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def tmpfs(path: Path, size: str = "64k", read_only: bool = False):
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        pytest.skip(f"cannot mount a tmpfs to make a real full/read-only disk: {err}")
    if done.returncode:
        pytest.skip("cannot mount a tmpfs to make a real full/read-only disk (needs root with "
                    f"CAP_SYS_ADMIN): {done.stderr.strip() or done.returncode}")
    try:
        yield path
    finally:
        # -l: detach even if a failed test left a file open in it.
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def fill(folder: Path) -> Path:
    """Write one file until the file system says ENOSPC; returns it."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        chunk = b"\0" * 4096
        while True:
            try:
                os.write(fd, chunk)
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise
                break
    finally:
        os.close(fd)
    return filler
