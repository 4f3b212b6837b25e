"""A real, tiny filesystem for disk-full and read-only tests: a tmpfs of a few MiB.

Mounting needs root (CAP_SYS_ADMIN), which CI has. Elsewhere the tests that need it skip, and
the injected-error tests in the same modules still run.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


@contextmanager
def tmpfs(directory: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (``2m``) on ``directory``; unmount afterwards."""
    directory.mkdir(parents=True, exist_ok=True)
    mounted = _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory))
    if mounted.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a tmpfs in CI: {mounted.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        # Lazily, in case the server still holds a file there; as many times as there are
        # mounts stacked on the directory (see cover_read_only).
        for _ in range(5):
            if not os.path.ismount(directory):
                break
            subprocess.run(["umount", "--lazy", str(directory)], check=False)


def cover_read_only(directory: Path) -> None:
    """Put a read-only bind mount of ``directory`` over itself: every new lookup through the
    path fails with EROFS, as after a filesystem was remounted read-only on errors (a plain
    ``remount,ro`` is refused while the server holds a file open for writing). The cover goes
    away with the tmpfs' lazy unmount."""
    for args in (
        ("--bind", str(directory), str(directory)),
        ("-o", "remount,bind,ro", str(directory)),
    ):
        result = _mount(*args)
        assert result.returncode == 0, result.stderr


def free_bytes(directory: Path) -> int:
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize
