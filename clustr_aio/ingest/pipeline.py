"""The ingest pipeline: files in (a name and an async stream of chunks each), validated files
published to storage, all of them or none.

It knows no HTTP and no wire format. :func:`ingest_file` is the one path every source of bytes
takes into a batch — a multipart part (:func:`clustr_aio.ingest.multipart.file_parts`), and
later a finished resumable upload — so the checks are written once: the extension, the bytes
against the extension, the per-file size limit. :func:`ingest_batch` receives a whole request's
files into one storage batch and publishes them together.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass

from clustr_aio.domain.errors import NoFilesUploaded, UnsupportedFile
from clustr_aio.domain.limits import UploadLimits
from clustr_aio.domain.names import extension_of, safe_name
from clustr_aio.domain.sniff import SNIFF_BYTES, verify_content
from clustr_aio.images.metadata import StripMode
from clustr_aio.images.structure import ImageInfo, image_check
from clustr_aio.storage.base import BatchScope, Buffer, FileWriter, HeadPatching, Storage

__all__ = [
    "IncomingFile",
    "IngestPolicy",
    "ReceivedFile",
    "StoredFile",
    "ingest_batch",
    "ingest_file",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class IngestPolicy:
    """What an upload must satisfy to be stored."""

    allowed_extensions: frozenset[str]
    limits: UploadLimits
    field_name: str = "files"
    """Multipart parts with another name are read past (they still count toward the request
    size)."""
    max_image_pixels: int = 100_000_000
    strip_metadata: StripMode = "location"


@dataclass(frozen=True, slots=True)
class IncomingFile:
    """One file as a source delivers it: the name the client gave, and its bytes as they come.
    ``chunks`` must be read to its end before the source's next file is asked for."""

    filename: str
    chunks: AsyncIterator[Buffer]


@dataclass(frozen=True, slots=True)
class ReceivedFile:
    """A file received into a batch and checked, not yet published."""

    original_filename: str
    file_size: int
    """Bytes stored: fewer than were sent when metadata was removed."""
    content_type: str
    image: ImageInfo | None = None
    """What the structure check read, for the known image types."""


@dataclass(frozen=True, slots=True)
class StoredFile:
    stored_filename: str
    original_filename: str
    file_size: int
    content_type: str
    image: ImageInfo | None = None


async def ingest_batch(
    files: AsyncIterable[IncomingFile], storage: Storage, policy: IngestPolicy
) -> list[StoredFile]:
    """Receive every file into one storage batch, then publish them all, or nothing.

    Raises a :class:`~clustr_aio.domain.errors.ClustrError` on the first file that breaks the
    policy (:class:`NoFilesUploaded` when there was none); the batch is then discarded, as it is
    when the caller's task is cancelled.
    """
    received: list[ReceivedFile] = []
    async with BatchScope(storage.batch()) as batch:
        async for incoming in files:
            policy.limits.check_file_count(len(received) + 1)
            received.append(await ingest_file(incoming, batch, policy))
        if not received:
            raise NoFilesUploaded(
                f"no files were uploaded: send them as multipart parts named {policy.field_name!r}"
            )
        names = await batch.publish()
    return [
        StoredFile(name, r.original_filename, r.file_size, r.content_type, r.image)
        for name, r in zip(names, received, strict=True)
    ]


async def ingest_file(file: IncomingFile, batch: BatchScope, policy: IngestPolicy) -> ReceivedFile:
    """Check one file and stream it into ``batch``: its extension before any byte is read, its
    first bytes against the extension before any byte is written, its size as it grows, and an
    image's structure, pixel count and metadata as its bytes pass
    (:mod:`clustr_aio.images.structure`: one pass, no decode)."""
    filename = file.filename
    extension = _allowed_extension(filename, policy.allowed_extensions)  # a nameless file fails
    head_chunks = await _read_head(file.chunks)
    content_type = verify_content(
        extension, _first_bytes(head_chunks, SNIFF_BYTES), filename=filename
    )
    check = image_check(
        content_type,
        filename,
        max_pixels=policy.max_image_pixels,
        strip=policy.strip_metadata,
    )

    writer: FileWriter = batch.add_file(safe_name(filename))
    if check is not None and not isinstance(writer, HeadPatching):
        writer = _HeldUntilClose(writer)
    size = 0
    for chunk in head_chunks:
        size += len(chunk)
        policy.limits.check_file_size(size, filename)
        await _write(writer, check.feed(chunk) if check else (chunk,))
    # Let go of the head: its chunks are slices of the first read, which they would keep whole
    # in memory for as long as the part lasts (a stalled upload: for good).
    del head_chunks
    async for chunk in file.chunks:
        size += len(chunk)
        policy.limits.check_file_size(size, filename)
        await _write(writer, check.feed(chunk) if check else (chunk,))
    if check is None:
        await writer.close()
        return ReceivedFile(filename, size, content_type)
    await _write(writer, check.finish())
    if check.patches:
        assert isinstance(writer, HeadPatching)  # made one above
        for offset, data in check.patches:
            writer.patch(offset, data)
    await writer.close()
    return ReceivedFile(filename, check.written, content_type, check.info)


async def _write(writer: FileWriter, pieces: Sequence[Buffer]) -> None:
    for piece in pieces:
        await writer.write(piece)


class _HeldUntilClose:
    """A writer that cannot patch (:class:`HeadPatching`) made one that can: an image is held
    in memory until its end, then written whole."""

    def __init__(self, writer: FileWriter) -> None:
        self._writer = writer
        self._held: list[bytes] = []
        self._patches: list[tuple[int, bytes]] = []

    async def write(self, data: Buffer) -> None:
        self._held.append(bytes(data))

    def patch(self, offset: int, data: bytes) -> None:
        self._patches.append((offset, data))

    async def close(self) -> None:
        whole = bytearray(b"".join(self._held))
        for offset, data in self._patches:
            whole[offset : offset + len(data)] = data
        await self._writer.write(bytes(whole))
        await self._writer.close()


def _allowed_extension(filename: str, allowed: frozenset[str]) -> str:
    extension = extension_of(filename)
    if extension not in allowed:
        what = f"files of type .{extension}" if extension else "files without an extension"
        listed = ", ".join(sorted(allowed))
        raise UnsupportedFile(f"{filename!r}: {what} are not accepted; allowed: {listed}")
    return extension


async def _read_head(chunks: AsyncIterator[Buffer]) -> list[Buffer]:
    """The first chunks, enough of them to hold ``SNIFF_BYTES`` (fewer at the stream's end)."""
    head: list[Buffer] = []
    have = 0
    while have < SNIFF_BYTES:
        chunk = await anext(chunks, None)
        if chunk is None:
            break
        head.append(chunk)
        have += len(chunk)
    return head


def _first_bytes(chunks: Sequence[Buffer], n: int) -> bytes:
    if chunks and len(chunks[0]) >= n:
        return bytes(chunks[0][:n])
    return b"".join(chunks)[:n]
