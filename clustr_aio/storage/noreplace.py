"""Move a file to a new name, atomically and never over an existing one.

Linux's ``renameat2(..., RENAME_NOREPLACE)`` (3.15+, glibc 2.28+; ext4, xfs, btrfs, tmpfs…)
does it in one step: the name appears with the file's bytes, or ``EEXIST``. Python's
``os.rename`` has no flags, so it is called through ``ctypes``. Where it is missing (another
libc, another kernel, a filesystem that answers ``EINVAL``), ``os.link`` then ``os.unlink`` of
the source does the same in two steps: the link is the atomic, never-overwriting part; a crash
between the two leaves only the temporary name behind, which the start-up sweep removes.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from typing import Final

__all__ = ["rename_noreplace"]

_AT_FDCWD: Final = -100
_RENAME_NOREPLACE: Final = 1
# Errors that mean "this system cannot rename without replacing", not "this rename failed".
_UNSUPPORTED: Final = frozenset({errno.ENOSYS, errno.EINVAL, errno.ENOTSUP})


def _load_renameat2() -> Callable[[int, bytes, int, bytes, int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = (
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    )
    function.restype = ctypes.c_int
    renameat2: Callable[[int, bytes, int, bytes, int], int] = function
    return renameat2


_renameat2 = _load_renameat2()


def rename_noreplace(source: str, target: str) -> None:
    """Give ``source``'s file the name ``target``; ``FileExistsError`` if ``target`` exists.
    Blocking (one system call, or two without ``renameat2``)."""
    global _renameat2
    if _renameat2 is not None:
        result = _renameat2(
            _AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE
        )
        if result == 0:
            return
        code = ctypes.get_errno()
        if code not in _UNSUPPORTED:  # EEXIST makes it a FileExistsError
            raise OSError(code, os.strerror(code), source, None, target)
        _renameat2 = None  # this kernel or filesystem cannot: link + unlink from now on
    os.link(source, target)
    os.unlink(source)
