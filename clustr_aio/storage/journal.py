"""Crash-safe publishing for the local folder: a batch's journal, and the roll-back of the
batches a dead process had published but not sealed.

A batch is published by one ``os.link`` per file into the folder, and its records are then
committed to the catalog; only once both are done may it be answered 200. A process killed in
between (``kill -9``, the OOM killer, a watchdog, a power cut) must leave nothing published,
neither a part of the batch (some files linked, not all) nor the whole of it (every file
linked, no record committed: the start-up reconciliation would adopt the files of an upload
nobody was told of). So a publish stays undone until the caller **seals** it, after its own
commit, and the start-up sweep rolls back any batch a dead process had not sealed. In the
process's own ``.incoming/<process id>/`` directory:

1. before the first link of a batch of several files, ``<batch id>.journal`` is created (and,
   with ``FSYNC``, its directory entry flushed), listing the batch's temporary files and the
   names they were meant to get;
2. the files are linked into the folder, and the folder is flushed; the temporary files stay,
   each a second name of its published file;
3. the caller commits its records (the catalog's transaction);
4. **the seal**: the journal is renamed ``<batch id>.sealed`` (and that flushed); only then are
   the temporary files removed, and, that flushed too, the marker; then the 200 is sent.

A batch of one file has no journal: its temporary file is the journal. It is linked (not
renamed) into the folder, and its seal is the removal of the temporary file (flushed with
``FSYNC``): one atomic step, after which nothing of the batch is left in ``.incoming``.

So, in a dead process's directory, a temporary file ``<batch id>.<n>`` that is still a hard
link of a published file (``st_nlink`` > 1) belongs to a batch that was never sealed unless
``<batch id>.sealed`` is there: that batch was never answered 200, and the start-up sweep
unlinks every name in the folder that is a hard link to one of its temporary files, which are
all still there (they are removed only after the seal). Identity is the inode (``st_dev`` and
``st_ino`` of the temporary file, which still holds it, so it cannot have been reused): a file
stored later under a name the batch had used is never touched, nor is anything else, such as
a file an operator copied into the folder (the reconciliation adopts those). A batch whose
records were committed but which was not sealed loses them too: the reconciliation that
follows the sweep removes records without a file. The journal's own text (the names) is for
the log and for people: the roll-back needs only its name, so only its directory entry is
flushed, not its data.

``CLUSTR_AIO_TEST_PUBLISH_PAUSE`` exists for the tests alone (it is not a setting): a
comma-separated list of points at which the publishing thread logs ``publish paused at
<point>`` and waits forever, to be killed there: ``link <n>`` (before the n-th link, counted
from 0), ``linked`` (after the last link and the folder's flush: the caller's commit has not
begun), ``seal`` (the caller's commit is done, the batch not sealed yet) and ``sealed`` (sealed,
the answer not sent yet).
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
    "SEALED_SUFFIX",
    "PausePoint",
    "abandon",
    "begin",
    "forget",
    "pause_points",
    "roll_back",
    "seal",
]

log = logging.getLogger("clustr_aio")

JOURNAL_SUFFIX: Final = ".journal"
SEALED_SUFFIX: Final = ".sealed"
PAUSE_VARIABLE: Final = "CLUSTR_AIO_TEST_PUBLISH_PAUSE"

PausePoint = Callable[[str], None]


def journal_path(directory: Path, batch_id: str) -> Path:
    return directory / f"{batch_id}{JOURNAL_SUFFIX}"


def begin(
    directory: Path, batch_id: str, files: Sequence[tuple[str | Path, str]], *, durable: bool
) -> Path:
    """Write the journal of a batch about to be published: (temporary file, desired name)
    pairs. ``durable``: flush its directory entry before returning. Blocking."""
    path = journal_path(directory, batch_id)
    listed = [[os.path.basename(p), name] for p, name in files]
    text = json.dumps({"batch": batch_id, "files": listed})
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, text.encode())  # informational: the roll-back reads only the name
    finally:
        os.close(fd)
    if durable:
        fsync_directory(directory)
    return path


def seal(journal: Path, *, durable: bool) -> Path:
    """The batch's caller has committed: rename its journal to the ``.sealed`` marker (flushed
    with ``durable``), which keeps the batch published whatever becomes of its temporary files.
    Returns the marker. Blocking."""
    marker = journal.with_suffix(SEALED_SUFFIX)
    os.rename(journal, marker)
    if durable:
        fsync_directory(journal.parent)
    return marker


def abandon(journal: Path, *, durable: bool) -> None:
    """Remove the journal of a publish whose links were taken back (flushed with
    ``durable``). Blocking."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(journal)
    if durable:
        fsync_directory(journal.parent)


def forget(marker: Path, *, durable: bool) -> None:
    """Remove a ``.sealed`` marker once its batch's temporary files are removed; with
    ``durable``, their removal is flushed first (a temporary file back after a power cut, with
    no marker beside it, would be rolled back). Blocking."""
    if durable:
        fsync_directory(marker.parent)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(marker)


def roll_back(dead: Path, folder: Path) -> list[str]:
    """Unpublish every batch of ``dead`` (a dead process's directory, whose lock the caller
    holds) that was not sealed: unlink each name in ``folder`` that is a hard link to one of
    the batch's temporary files. Returns the names removed. Blocking."""
    linked: dict[str, list[os.stat_result]] = {}  # batch id -> its temporary files linked
    sealed: set[str] = set()
    journaled: set[str] = set()  # (for the log: one killed before its first link is one too)
    with os.scandir(dead) as entries:
        for entry in entries:
            batch, _, rest = entry.name.rpartition(".")
            if not batch:
                continue  # .lock, and the dot-names of the readiness probe
            if f".{rest}" == SEALED_SUFFIX:
                sealed.add(batch)
            elif f".{rest}" == JOURNAL_SUFFIX:
                journaled.add(batch)
            elif rest.isdigit() and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat(follow_symlinks=False)
                    if st.st_nlink > 1:
                        linked.setdefault(batch, []).append(st)
    unsealed = journaled.union(linked).difference(sealed)
    if not unsealed:
        return []
    # (st_dev, st_ino) of each temporary file linked elsewhere -> how many links to find.
    pending = {
        (st.st_dev, st.st_ino): st.st_nlink - 1
        for batch in unsealed
        for st in linked.get(batch, ())
    }
    removed = _unlink_links(folder, pending) if pending else []
    log.warning(
        "rolled back %d publish(es) that ended with process %s: %d file(s) unpublished",
        len(unsealed),
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
