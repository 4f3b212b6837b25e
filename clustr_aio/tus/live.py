"""A resumable upload's file received by the ingest pipeline while its requests arrive.

Without it, a finished upload is read back from the store and goes through the pipeline then:
a second pass over every byte, all of it in the completing request (1 GiB: seconds of reading,
hashing and copying after the last byte came, and the page cache read faster than the copy is
written, so the process's peak memory grows). A :class:`LiveIngest` instead feeds each chunk to
a pipeline run (:func:`~clustr_aio.ingest.pipeline.ingest_batch`, in a task of its own) as the
request appends it to the store; the completing request only ends the stream, and the file is
published and catalogued as a read-back one would be.

It lives in one process, in memory, and only while it has seen exactly the bytes the store
committed: the handler drops it (its batch discarded) when a request fails or is rolled back,
when another process (a worker, a restart) received bytes in between, or when the upload ends
otherwise; the read-back is then what publishes the file. The pipeline's own refusals (a
structure that breaks in the middle, a pixel bomb) come back at the next chunk fed, as
:class:`FileRefused`: the upload is refused then, long before its end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

from clustr_aio.domain.errors import ClustrError
from clustr_aio.ingest.pipeline import StoredFile
from clustr_aio.storage.base import Buffer

__all__ = ["FileRefused", "LiveIngest"]

_QUEUED: Final = 1
"""Chunks waiting for the pipeline (each one read of the request body): the pipeline's own
blocks bound the rest, so a slow disk slows the reading of the body, not the memory."""


class FileRefused(Exception):
    """The pipeline refused the file while its bytes were being fed (``error`` says why)."""

    def __init__(self, error: ClustrError) -> None:
        super().__init__(error.detail)
        self.error = error


class LiveIngest:
    """One upload's pipeline run, fed as its bytes are committed."""

    def __init__(self, ingest: Callable[[AsyncIterator[Buffer]], Awaitable[StoredFile]]) -> None:
        self.offset = 0
        """Bytes fed: the upload's committed offset while the run may go on."""
        self._queue: asyncio.Queue[Buffer | None] = asyncio.Queue(_QUEUED)
        self._run: asyncio.Future[StoredFile] = asyncio.ensure_future(ingest(self._chunks()))

    async def _chunks(self) -> AsyncIterator[Buffer]:
        while (chunk := await self._queue.get()) is not None:
            yield chunk

    def tee(self, chunks: AsyncIterator[Buffer]) -> AsyncIterator[Buffer]:
        """``chunks``, each also fed to the pipeline before it is passed on."""

        async def fed() -> AsyncIterator[Buffer]:
            async for chunk in chunks:
                if not await self._offer(chunk):
                    raise self._ended_early()
                yield chunk

        return fed()

    async def finish(self) -> StoredFile:
        """End the stream: the file is published and catalogued; its record (or the run's
        error: a refusal of the file is its :class:`ClustrError` itself)."""
        await self._offer(None)
        return await self._run

    async def _offer(self, chunk: Buffer | None) -> bool:
        """Queue ``chunk`` (None: the end); False if the run ended first. A chunk queued is
        counted even if the caller is cancelled meanwhile, so that :attr:`offset` never says
        less than the run saw."""
        if self._run.done():
            return False
        if not self._queue.full():  # room: queued without a task and a wait of its own
            self._queue.put_nowait(chunk)
            if chunk is not None:
                self.offset += len(chunk)
            return True
        put = asyncio.ensure_future(self._queue.put(chunk))
        try:
            await asyncio.wait((put, self._run), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not put.done():
                put.cancel()  # a put cancelled before it is done queues nothing
            elif not put.cancelled() and chunk is not None:
                self.offset += len(chunk)
        return put.done() and not put.cancelled()

    def _ended_early(self) -> BaseException:
        error = self._run.exception() if not self._run.cancelled() else None
        if isinstance(error, ClustrError) and error.per_file:
            return FileRefused(error)
        if error is not None:
            return error
        return RuntimeError("the upload's pipeline run ended before its last byte")

    @property
    def ended(self) -> bool:
        return self._run.done()

    async def abort(self) -> None:
        """Stop the run: its batch is discarded (nothing of it is published)."""
        self._run.cancel()
        await asyncio.gather(self._run, return_exceptions=True)
