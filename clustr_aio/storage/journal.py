"""Crash-safe publishing for the local folder: a batch's journal, and the roll-back of the
batches a dead process was publishing.

Publishing a batch of several files is one ``os.link`` per file: each is atomic, the batch is
not. (A batch of one file is one rename, atomic as a whole: it has no journal.) A process
killed between its first and last link (``kill -9``, the OOM killer, a watchdog, a power cut)
would leave part of a batch published, never answered and never removed. So, in the process's
own ``.incoming/<process id>/`` directory:

1. before the first link, ``<batch id>.journal`` is created (and, with ``FSYNC``, its directory
   entry flushed), listing the batch's temporary files and the names they were meant to get;
2. the files are linked into the folder, and the folder is flushed;
3. the journal is removed (and that flushed): **this is the commit**; only then are the
   temporary files removed and the 200 sent.

A journal found in a dead process's directory therefore means "this batch was never answered
200": the start-up sweep unlinks every name in the folder that is a hard link to one of that
batch's temporary files, which are all still there (they are removed only after the commit).
Identity is the inode (``st_dev`` and ``st_ino`` of the temporary file, which still holds it,
so it cannot have been reused): a file stored later under a name the batch had used is never
touched, nor is anything else. The journal's own text (the names) is for the log and for people;
the roll-back needs only its name, so only its directory entry is flushed, not its data.

``CLUSTR_AIO_TEST_PUBLISH_PAUSE`` exists for the tests alone (it is not a setting): a
comma-separated list of points (``link <n>``: before the n-th link, counted from 0; ``commit``:
after the last link and the folder's flush, before the journal is removed) at which the
publishing thread logs ``publish paused at <point>`` and waits forever, to be killed there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final

__all__ = [
    "JOURNAL_SUFFIX",
    "PAUSE_VARIABLE",
    "PausePoint",
    "begin",
    "commit",
    "pause_points",
    "roll_back",
]

log = logging.getLogger("clustr_aio")

JOURNAL_SUFFIX: Final = ".journal"
PAUSE_VARIABLE: Final = "CLUSTR_AIO_TEST_PUBLISH_PAUSE"

PausePoint = Callable[[str], None]


def journal_path(directory: Path, batch_id: str) -> Path:
    return directory / f"{batch_id}{JOURNAL_SUFFIX}"


def begin(
    directory: Path, batch_id: str, files: Sequence[tuple[Path, str]], *, durable: bool
) -> Path:
    """Write the journal of a batch about to be published: (temporary file, desired name)
    pairs. ``durable``: flush its directory entry before returning. Blocking."""
    path = journal_path(directory, batch_id)
    text = json.dumps({"batch": batch_id, "files": [[p.name, name] for p, name in files]})
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, text.encode())  # informational: the roll-back reads only the name
    finally:
        os.close(fd)
    if durable:
        fsync_directory(directory)
    return path


def commit(journal: Path, *, durable: bool) -> None:
    """The batch is published: remove its journal (flushed with ``durable``). Blocking."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(journal)
    if durable:
        fsync_directory(journal.parent)


def roll_back(dead: Path, folder: Path) -> list[str]:
    """Unpublish every batch journaled in ``dead`` (a dead process's directory, whose lock the
    caller holds): unlink each name in ``folder`` that is a hard link to one of the batch's
    temporary files. Returns the names removed. Blocking."""
    journals = sorted(dead.glob(f"*{JOURNAL_SUFFIX}"))
    if not journals:
        return []
    # (st_dev, st_ino) of each temporary file linked elsewhere -> how many links to find.
    pending: dict[tuple[int, int], int] = {}
    for journal in journals:
        prefix = journal.name.removesuffix(JOURNAL_SUFFIX) + "."
        for temporary in dead.iterdir():
            if not temporary.name.startswith(prefix) or temporary == journal:
                continue
            with contextlib.suppress(FileNotFoundError):
                st = temporary.lstat()
                if st.st_nlink > 1:
                    pending[(st.st_dev, st.st_ino)] = st.st_nlink - 1
    removed = _unlink_links(folder, pending) if pending else []
    log.warning(
        "rolled back %d publish(es) that ended with process %s: %d file(s) unpublished",
        len(journals),
        dead.name,
        len(removed),
    )
    return removed


def _unlink_links(folder: Path, pending: dict[tuple[int, int], int]) -> list[str]:
    removed: list[str] = []
    left = sum(pending.values())
    with os.scandir(folder) as entries:
        for entry in entries:
            if left == 0:
                break
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            key = (st.st_dev, st.st_ino)
            if st.st_nlink < 2 or pending.get(key, 0) <= 0:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(entry.name)
            pending[key] -= 1
            left -= 1
    return removed


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pause_points(environ: Mapping[str, str]) -> PausePoint | None:
    """The test-only pause hook from ``CLUSTR_AIO_TEST_PUBLISH_PAUSE``, None when unset."""
    spec = environ.get(PAUSE_VARIABLE, "")
    points = frozenset(point.strip() for point in spec.split(",") if point.strip())
    if not points:
        return None

    def pause(point: str) -> None:
        if point in points:
            log.warning("publish paused at %s", point)
            threading.Event().wait()  # until the process is killed

    return pause
