"""Clearing away a measurement's files without deleting any until the run is over.

This machine's ext4 runs without a journal (/proc/fs/jbd2 is empty), and such an ext4 does not
hand out an inode freed in the last minute (five, while its inode table block is dirty): each
file created after thousands were deleted pays for a scan past them, up to 0.7 ms of CPU here
instead of 20 µs. Deleting the thousands of files one C measurement stores would bill the next
measurements for it, and unevenly: B creates 500 files on clustr_aio's side, one on nginx's.

So a measurement's files are moved into the attic, a folder on the same filesystem, and emptied
there, which frees their blocks (the disk does not fill up) but not their inodes. The attic is
removed with the rest of the run's folder at the end.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path


class Attic:
    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._names = itertools.count()

    def stash(self, folder: Path, *, keep: frozenset[str] = frozenset()) -> None:
        """Move every regular file of ``folder`` here and empty it, except dot-files and ``keep``.

        Files that vanish or appear meanwhile (a client's last requests landing) are fine: what
        is missed now is taken next time.
        """
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith(".") or entry.name in keep:
                    continue
                if not entry.is_file(follow_symlinks=False):
                    continue
                target = self.folder / str(next(self._names))
                with contextlib.suppress(FileNotFoundError):
                    os.rename(entry.path, target)
                    os.truncate(target, 0)
