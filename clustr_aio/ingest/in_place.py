"""A file whose bytes are on this machine already, written only where the checks change them.

A resumable upload's bytes are in its data file (``UPLOAD_FOLDER/.tus/<id>/data``) by the time
its pipeline run ends; writing them again to the batch's temporary file doubled the disk
traffic of every tus upload (TL: 2 GiB written for a 1 GiB file, which nginx writes once). So
while the image check passes the input through untouched (``ImageCheck.verbatim_until`` is
None; a type without a check always does), nothing is written; when it changes something (a
metadata segment removed, a tail dropped), the output from there on is written after the first
bytes, which are the data file's (:class:`~clustr_aio.storage.base.Adopting`: the writer copies
them in the kernel at its close). A file left whole becomes a hard link of the data file: no
byte written or copied. The checks, the hash and the stored result are those of any upload.
"""

from __future__ import annotations

from typing import Protocol

from clustr_aio.images.structure import ImageCheck
from clustr_aio.storage.base import Adopting, Buffer, FileWriter, HeadPatching

__all__ = ["AdoptingWriter", "InPlaceWriter"]


class AdoptingWriter(FileWriter, HeadPatching, Adopting, Protocol):
    """A writer that can patch and adopt (the local folder's)."""


class InPlaceWriter:
    """Stands for ``writer``, the batch's file for bytes that are ``source``'s, as the
    pipeline's writer: what the check outputs is written to it only from where it differs."""

    def __init__(self, writer: AdoptingWriter, source: str, check: ImageCheck | None) -> None:
        self._writer = writer
        self._source = source
        self._check = check
        self._seen = 0
        """Output bytes so far, while none was written."""
        self._writing = False

    async def write(self, data: Buffer) -> None:
        if self._writing:
            await self._writer.write(data)
            return
        until = self._check.verbatim_until if self._check is not None else None
        if until is None or until >= self._seen + len(data):
            self._seen += len(data)
            return
        # The output stops being the input at ``until``: the source's first ``until`` bytes,
        # then what the check makes of the rest.
        self._start_writing(until)
        skip = until - self._seen
        await self._writer.write(memoryview(data)[skip:] if skip else data)

    def _start_writing(self, until: int) -> None:
        self._writer.adopt(self._source, until)
        self._writing = True

    def patch(self, offset: int, data: bytes) -> None:
        if not self._writing:
            self._start_writing(self._seen)  # a patched file is no longer the source
        self._writer.patch(offset, data)

    async def close(self) -> None:
        if not self._writing:  # the input byte for byte: the source itself
            self._writer.adopt(self._source, self._seen)
        await self._writer.close()
