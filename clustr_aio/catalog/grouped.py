"""One-record commits asked for in the same turn of the event loop, made as one transaction.

Sixteen uploads of one photo each at a time (bench C) commit a record each: in SQLite a
transaction of one row cost about 120-170 µs of CPU here (its locks, and the WAL frames of the
table's and each index's page, a ``pwrite`` for each), and one of 8 rows about 17 µs a row, as
the rows share those pages (issue 16). So a commit asked for on the loop waits for the end of
the loop's current turn, and every commit asked for until then goes in the same transaction.
No commit waits for another upload: the turn ends as soon as the ready callbacks have run.

Each caller still gets its own outcome: a transaction of several callers' rows that fails on
a row (a constraint, a value the database refuses) is tried again one caller's rows at a time,
so one caller's bad row never fails another. A failure of the database itself (locked too
long, disk full) is every caller's, as it would have been alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

__all__ = ["GroupedCommits", "Row"]

Row = Sequence[object]
CommitOnLoop = Callable[[Sequence[Row]], bool]
"""Commits the rows on the loop's own thread, or returns False if it cannot at once (the
database is locked: another connection is writing)."""
CommitElsewhere = Callable[[Sequence[Row]], Awaitable[object]]
"""Commits the rows off the loop (a thread that may wait for the lock)."""

_ALONE: Final = 1

_Pending = list[tuple[Sequence[Row], "asyncio.Future[None]"]]
"""Each caller's rows, and the future that tells it their outcome."""


class GroupedCommits:
    """Gathers the rows of :meth:`commit` calls made until the loop's current turn ends."""

    __slots__ = ("_elsewhere", "_on_loop", "_pending", "_row_errors")

    def __init__(
        self,
        on_loop: CommitOnLoop,
        elsewhere: CommitElsewhere,
        row_errors: tuple[type[Exception], ...],
    ) -> None:
        """``row_errors``: the errors a row can be the cause of (which are tried again)."""
        self._on_loop = on_loop
        self._elsewhere = elsewhere
        self._row_errors = row_errors
        self._pending: _Pending = []

    def commit(self, rows: Sequence[Row]) -> asyncio.Future[None]:
        """``rows`` committed with those of the other calls of this turn: done once they are."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((rows, done))
        return done

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        self._commit(pending)

    def _commit(self, pending: _Pending) -> None:
        rows = [row for own, _ in pending for row in own]
        try:
            committed = self._on_loop(rows)
        except Exception as error:
            self._failed(pending, error)
            return
        if committed:
            _settle(pending, None)
            return
        task = asyncio.ensure_future(self._elsewhere(rows))
        task.add_done_callback(lambda finished: self._finished(pending, finished))

    def _finished(self, pending: _Pending, task: asyncio.Future[object]) -> None:
        error = asyncio.CancelledError() if task.cancelled() else task.exception()
        if error is None:
            _settle(pending, None)
        else:
            self._failed(pending, error)

    def _failed(self, pending: _Pending, error: BaseException) -> None:
        """The transaction failed: with one caller, or not because of a row, the error of each;
        else each caller's rows again on their own (nothing of the failed one was kept)."""
        if len(pending) == _ALONE or not isinstance(error, self._row_errors):
            _settle(pending, error)
            return
        for one in pending:
            self._commit([one])


def _settle(pending: _Pending, error: BaseException | None) -> None:
    for _, done in pending:
        if done.done():  # its caller was cancelled; the rows are committed (or failed) anyway
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)
