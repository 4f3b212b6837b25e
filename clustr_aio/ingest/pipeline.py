"""The ingest pipeline: a stream of multipart parts in, validated files published to storage.

It knows no HTTP. Driven today by a multipart upload; a resumable (tus) upload will feed the same
checks and the same storage batch with the bytes of one file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from clustr_aio.domain.errors import NoFilesUploaded, UnsupportedFile
from clustr_aio.domain.limits import UploadLimits
from clustr_aio.domain.names import extension_of, safe_name
from clustr_aio.domain.sniff import SNIFF_BYTES, verify_content
from clustr_aio.ingest.multipart import MultipartStream, PartInfo
from clustr_aio.storage.base import BatchScope, Buffer, Storage


@dataclass(frozen=True, kw_only=True, slots=True)
class IngestPolicy:
    """What an upload must satisfy to be stored."""

    allowed_extensions: frozenset[str]
    limits: UploadLimits
    field_name: str = "files"
    """Parts with another name are read past (they still count toward the request size)."""


@dataclass(frozen=True, slots=True)
class StoredFile:
    stored_filename: str
    original_filename: str
    file_size: int
    content_type: str


@dataclass(frozen=True, slots=True)
class _Received:
    original_filename: str
    file_size: int
    content_type: str


async def ingest_multipart(
    parts: MultipartStream, storage: Storage, policy: IngestPolicy
) -> list[StoredFile]:
    """Receive every file part into one storage batch, then publish them all, or nothing.

    Raises a :class:`~clustr_aio.domain.errors.ClustrError` on the first part that breaks the
    policy; the batch is then discarded, as it is when the caller's task is cancelled.
    """
    received: list[_Received] = []
    async with BatchScope(storage.batch()) as batch:
        while (part := await parts.next_part()) is not None:
            if part.name != policy.field_name:
                continue
            file = await _receive_file(part, parts, batch, policy, files_so_far=len(received))
            if file is not None:
                received.append(file)
        if not received:
            raise NoFilesUploaded(
                f"no files were uploaded: send them as multipart parts named {policy.field_name!r}"
            )
        names = await batch.publish()
    return [
        StoredFile(name, r.original_filename, r.file_size, r.content_type)
        for name, r in zip(names, received, strict=True)
    ]


async def _receive_file(
    part: PartInfo,
    parts: MultipartStream,
    batch: BatchScope,
    policy: IngestPolicy,
    *,
    files_so_far: int,
) -> _Received | None:
    filename = part.filename or ""
    if not filename and not await _read_head(parts):
        return None  # an HTML form's empty file input (no name, no bytes): no file was chosen
    policy.limits.check_file_count(files_so_far + 1)
    extension = _allowed_extension(filename, policy.allowed_extensions)  # a nameless file fails
    head_chunks = await _read_head(parts)
    head = _first_bytes(head_chunks, SNIFF_BYTES)
    content_type = verify_content(extension, head, filename=filename)

    writer = batch.add_file(safe_name(filename))
    size = 0
    chunk: Buffer = b""
    for chunk in head_chunks:
        size += len(chunk)
        policy.limits.check_file_size(size, filename)
        await writer.write(chunk)
    # Let go of the head: its chunks are slices of the first read, which they would keep whole
    # in memory for as long as the part lasts (a stalled upload: for good).
    del head_chunks
    while chunk := await parts.read_chunk():
        size += len(chunk)
        policy.limits.check_file_size(size, filename)
        await writer.write(chunk)
    await writer.close()
    return _Received(filename, size, content_type)


def _allowed_extension(filename: str, allowed: frozenset[str]) -> str:
    extension = extension_of(filename)
    if extension not in allowed:
        what = f"files of type .{extension}" if extension else "files without an extension"
        listed = ", ".join(sorted(allowed))
        raise UnsupportedFile(f"{filename!r}: {what} are not accepted; allowed: {listed}")
    return extension


async def _read_head(parts: MultipartStream) -> list[Buffer]:
    """The part's first chunks, enough of them to hold ``SNIFF_BYTES`` (fewer at the part's end)."""
    chunks: list[Buffer] = []
    have = 0
    while have < SNIFF_BYTES and (chunk := await parts.read_chunk()):
        chunks.append(chunk)
        have += len(chunk)
    return chunks


def _first_bytes(chunks: Sequence[Buffer], n: int) -> bytes:
    if chunks and len(chunks[0]) >= n:
        return bytes(chunks[0][:n])
    return b"".join(chunks)[:n]
