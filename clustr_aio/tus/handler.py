"""The tus 1.0.0 protocol with all its extensions, over a :class:`ResumableStore`.

In tusd's manner (``pkg/handler`` against ``pkg/filestore``): this module decides what a request
means and what to answer; where bytes and state live is the store's business, and errors carry
their HTTP status. It knows no aiohttp: a request is its headers and an async stream of its body
(:class:`TusRequest`), an answer a status and headers (:class:`TusAnswer`); ``web/routes/tus.py``
translates.

An upload's file is one :class:`~clustr_aio.ingest.pipeline.IncomingFile`, received by
:func:`~clustr_aio.ingest.pipeline.ingest_batch` like a multipart part: the same extension,
magic-byte, image and size checks, the same hashing, dedupe, publishing and catalogue record.
Its bytes are fed to that pipeline as its requests append them (:mod:`.live`), or, when the run
in this process was lost (a restart, another worker, a failed request), read back from the
store once complete. Its extension is checked at creation and its first bytes as soon as they
arrive, so a wrong file is refused (415, and the upload terminated) long before its end.

With AUTH=keys an upload is its creating key's owner's: another owner's requests do not find it
(404, as with files), its file is catalogued as that owner's (DEDUPE among theirs), and its
bytes are reserved against the key's quota for as long as it lives
(:mod:`clustr_aio.auth.quota`): its whole ``Upload-Length`` at its creation (507 before any
byte, nothing made), or, while its length is deferred, its bytes as they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Final

from clustr_aio.auth.keys import OPEN, Principal
from clustr_aio.auth.quota import QuotaMeter
from clustr_aio.catalog.base import Catalog
from clustr_aio.domain.errors import (
    BadRequest,
    ChecksumMismatch,
    ClustrError,
    FinalUploadPatched,
    InsufficientStorage,
    NotFound,
    OffsetMismatch,
    ServerBusy,
    UnsupportedFile,
    UploadGone,
    UploadLocked,
    UploadTooLarge,
    WrongContentType,
)
from clustr_aio.domain.names import extension_of
from clustr_aio.domain.sniff import SNIFF_BYTES, verify_content
from clustr_aio.ingest.pipeline import (
    IncomingFile,
    IngestPolicy,
    StoredFile,
    allowed_extension,
    ingest_batch,
)
from clustr_aio.storage.base import Buffer, Storage
from clustr_aio.storage.resumable import HeldUpload, LocalData, ResumableStore, UploadInfo
from clustr_aio.tus.headers import (
    CHECKSUM_ALGORITHMS,
    CHECKSUM_TRAILER,
    EXTENSIONS,
    OFFSET_OCTET_STREAM,
    PARTIAL_UPLOAD,
    TUS_VERSION,
    Checksum,
    EveryDigest,
    announces_checksum_trailer,
    check_version,
    encode_metadata,
    http_date,
    parse_checksum,
    parse_complete,
    parse_concat,
    parse_metadata,
    parse_size,
    speaks_draft,
)
from clustr_aio.tus.live import FileRefused, LiveIngest

__all__ = ["FILE_ID_HEADER", "FILE_URL_HEADER", "TusAnswer", "TusHandler", "TusRequest"]

log = logging.getLogger("clustr_aio")

FILE_ID_HEADER: Final = "Clustr-File-Id"
FILE_URL_HEADER: Final = "Clustr-File-Url"
_LIVE_RUNS: Final = 64
"""Live pipeline runs a process keeps at most (an open temporary file each, and what its
pipeline holds); further uploads are read back once complete."""
_LEASE_MARGIN: Final = timedelta(hours=1)
"""A quota reservation outlives its upload's expiry by this much: the expiry runs from the end
of the upload's last request, the lease from its start."""


@dataclass(frozen=True, slots=True)
class TusRequest:
    headers: Mapping[str, str]
    body: AsyncIterator[Buffer]
    """The body's chunks as they arrive; transport failures surface as domain errors."""
    content_length: int | None
    endpoint: str
    """The absolute URL of the creation endpoint, without its trailing slash."""
    files_url: str
    """The absolute URL of ``/api/files``: a published upload's record is under it."""
    principal: Principal = OPEN
    """Who asks (AUTH=keys): an upload is its creator's owner's, found by that owner only (and
    admins); its bytes count toward the creating key's quota."""
    trailers: Callable[[], Mapping[str, str] | None] | None = None
    """The body's trailer fields (lower-case names), called once the body has ended: None when
    they could not be read. None itself: the request announced none, its body is not chunked,
    or its connection cannot read them."""

    @property
    def draft(self) -> bool:
        """The IETF draft's interop version rather than tus 1.0.0 (same store, same rules)."""
        return speaks_draft(self.headers)

    @property
    def body_type(self) -> str:
        return PARTIAL_UPLOAD if self.draft else OFFSET_OCTET_STREAM

    @property
    def has_body(self) -> bool:
        return self.content_length != 0 and (
            self.content_length is not None or "Transfer-Encoding" in self.headers
        )


@dataclass(slots=True)
class TusAnswer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    published: list[StoredFile] = field(default_factory=list)
    """Files this request stored (its upload completed, or a final's last part did)."""


class TusHandler:
    """Every tus request, against one store; the policy and catalog of the ingest pipeline."""

    def __init__(
        self,
        *,
        store: ResumableStore,
        storage: Storage,
        policy: IngestPolicy,
        catalog: Catalog | None,
        expiry: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._local_data = store if isinstance(store, LocalData) else None
        """The store, where its uploads' bytes are local files (checked once: a runtime
        protocol's ``isinstance`` walks its members, a per-upload cost TB's profile showed)."""
        self._storage = storage
        self._policy = policy
        self._catalog = catalog
        self.expiry = expiry
        self._clock = clock
        self._runs: dict[str, LiveIngest] = {}
        """Live pipeline runs of this process's uploads (:mod:`.live`), by upload id."""

    @property
    def max_size(self) -> int:
        return self._policy.limits.max_file_size

    # -- OPTIONS ---------------------------------------------------------------------------

    def options(self, *, trailers: bool) -> TusAnswer:
        """``trailers``: whether the connection reads trailers (``checksum-trailer``)."""
        extensions = [e for e in EXTENSIONS if trailers or e != CHECKSUM_TRAILER]
        return TusAnswer(
            204,
            {
                "Tus-Version": TUS_VERSION,
                "Tus-Extension": ",".join(extensions),
                "Tus-Max-Size": str(self.max_size),
                "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
            },
        )

    # -- POST: creation, creation-with-upload, creation-defer-length, concatenation ---------

    async def create(self, request: TusRequest) -> TusAnswer:
        headers = request.headers
        check_version(headers)
        concat = parse_concat(headers.get("Upload-Concat"))
        metadata = parse_metadata(headers.get("Upload-Metadata"))
        if request.has_body and headers.get("Content-Type") != request.body_type:
            raise WrongContentType(f"a creation's body must be {request.body_type}")
        if concat is not None and not concat.partial:
            return await self._create_final(request, concat.parts, metadata)
        partial = concat is not None
        length = self._declared_length(headers, optional=request.draft)
        if not partial:
            self._check_name(metadata, length)
        info = self._new_upload(length, metadata, request.principal, partial=partial)
        meter = self._meter(info, kept="nothing of this upload was kept")
        if meter is not None and length is not None:
            await meter.reserve(length)  # 507 before any byte: no upload made
        answer = TusAnswer(201, {"Location": f"{request.endpoint}/{info.id}"})
        created = False
        try:
            if not request.has_body:
                await self.store.create(info)
                answer.headers["Upload-Expires"] = http_date(info.expires_at)
                return answer
            # creation-with-upload: the first chunk, as a PATCH would send it, to the upload
            # made and held in one trip to the store (a photo: one request, two trips fewer).
            async with self.store.create_held(info) as held:
                created = True
                patched = await self._receive(held, request, 0)
        except BaseException:
            if not created:
                await self._release(info)
            raise
        answer.headers.update(patched.headers)
        answer.published = patched.published
        return answer

    def _new_upload(
        self,
        length: int | None,
        metadata: dict[str, str],
        principal: Principal,
        *,
        partial: bool = False,
        parts: tuple[str, ...] = (),
    ) -> UploadInfo:
        now = self._clock()
        owner = principal.owner
        return UploadInfo(
            id=os.urandom(16).hex(),  # opaque: 128 random bits, without a UUID object made
            length=length,
            metadata=metadata,
            created_at=now,
            expires_at=now + self.expiry,
            partial=partial,
            parts=parts,
            owner=owner,
            # A final's bytes are its parts', reserved by them.
            quota=principal.quota if owner is not None and not parts else None,
        )

    def _declared_length(self, headers: Mapping[str, str], *, optional: bool) -> int | None:
        """tus: Upload-Length, or Upload-Defer-Length: 1. The draft (``optional``): a length
        not given is known once a request says Upload-Complete: ?1."""
        length = parse_size(headers, "Upload-Length")
        deferred = headers.get("Upload-Defer-Length")
        if deferred is not None and deferred.strip() != "1":
            raise BadRequest("Upload-Defer-Length: the only value is 1")
        if length is None and deferred is None and not optional:
            raise BadRequest("Upload-Length (or Upload-Defer-Length: 1) is required")
        if length is not None and deferred is not None:
            raise BadRequest("Upload-Length and Upload-Defer-Length exclude each other")
        if length is not None:
            self._check_length(length)
        return length

    def _check_length(self, length: int) -> None:
        if length > self.max_size:
            raise UploadTooLarge(
                f"the upload is larger than the limit of {self.max_size} bytes per file"
            )

    def _check_name(self, metadata: Mapping[str, str], length: int | None) -> str:
        """The name rules of a multipart part: a name with an allowed extension; an empty
        file is refused as it is there."""
        filename = metadata.get("filename")
        if not filename:
            raise BadRequest("Upload-Metadata: filename is required")
        extension = allowed_extension(filename, self._policy.allowed_extensions)
        if length == 0:
            verify_content(extension, b"", filename=filename)
        return filename

    async def _create_final(
        self, request: TusRequest, part_ids: Sequence[str], metadata: dict[str, str]
    ) -> TusAnswer:
        if "Upload-Length" in request.headers or request.has_body:
            raise BadRequest("a final upload has no Upload-Length nor body: its parts' bytes")
        filename = self._check_name(metadata, None)
        owner = request.principal.owner
        parts = [await self.store.get(part_id) for part_id in part_ids]
        for part in parts:
            # Another owner's part is not found, as with every other request; an admin's
            # final too concatenates its own owner's parts only (whose file it becomes).
            if part is None or part.expires_at <= self._clock() or part.owner != owner:
                raise BadRequest("Upload-Concat: a partial upload it names does not exist")
            if not part.partial:
                raise BadRequest("Upload-Concat: an upload it names is not a partial upload")
        known = [p.length for p in parts if p is not None and p.length is not None]
        length = sum(known) if len(known) == len(parts) else None
        if length is not None:
            self._check_length(length)
        head = await self.store.head(part_ids[0], SNIFF_BYTES)
        if len(head) >= SNIFF_BYTES or length == len(head):
            verify_content(extension_of(filename), head, filename=filename)
        info = self._new_upload(length, metadata, request.principal, parts=tuple(part_ids))
        await self.store.create(info)
        for part_id in part_ids:
            await self.store.refer(part_id, info.id)
        answer = TusAnswer(201, {"Location": f"{request.endpoint}/{info.id}"})
        # Now, if every part is complete.
        finished = await self._finish_final(info.id, answer.published)
        answer.headers.update(self._upload_headers(finished or info, request))
        return answer

    # -- HEAD ------------------------------------------------------------------------------

    async def head(self, upload_id: str, request: TusRequest) -> TusAnswer:
        check_version(request.headers)
        info = await self._live(upload_id, request.principal)
        if info.final and info.file_id is None:
            info = await self._finish_final(upload_id, []) or info  # after a crash, say
        headers = self._upload_headers(info, request)
        headers["Cache-Control"] = "no-store"
        if info.length is None:
            headers["Upload-Defer-Length"] = "1"
        else:
            headers["Upload-Length"] = str(info.length)
        if info.metadata:
            headers["Upload-Metadata"] = encode_metadata(info.metadata)
        if info.partial:
            headers["Upload-Concat"] = "partial"
        elif info.final:
            urls = " ".join(f"{request.endpoint}/{part}" for part in info.parts)
            headers["Upload-Concat"] = f"final;{urls}"
        return TusAnswer(200, headers)

    def _upload_headers(self, info: UploadInfo, request: TusRequest) -> dict[str, str]:
        headers = {"Upload-Expires": http_date(info.expires_at)}
        if not info.final or info.file_id is not None:  # a final's offset once it is whole
            headers["Upload-Offset"] = str(info.offset)
        if info.file_id is not None:
            headers[FILE_ID_HEADER] = info.file_id
            headers[FILE_URL_HEADER] = f"{request.files_url}/{info.file_id}"
        if request.draft:
            headers["Upload-Complete"] = "?1" if info.received_all else "?0"
        return headers

    async def _live(self, upload_id: str, principal: Principal) -> UploadInfo:
        return self._visible(await self.store.get(upload_id), principal)

    def _visible(self, info: UploadInfo | None, principal: Principal) -> UploadInfo:
        if info is None or not _sees(principal, info):
            raise NotFound("no upload has this id")
        if info.expires_at <= self._clock():
            raise UploadGone("this upload has expired")
        return info

    # -- PATCH -----------------------------------------------------------------------------

    async def patch(self, upload_id: str, request: TusRequest) -> TusAnswer:
        headers = request.headers
        check_version(headers)
        if headers.get("Content-Type") != request.body_type:
            raise WrongContentType(f"a PATCH's body must be {request.body_type}")
        offset = parse_size(headers, "Upload-Offset")
        if offset is None:
            raise BadRequest("Upload-Offset is required")
        # The lock first, and the state read under it (one trip to the store, not two); only
        # a locked upload is looked up beside it, so that another owner's is still a 404.
        holding = self.store.hold(upload_id)
        try:
            held = await holding.__aenter__()
        except UploadLocked:
            await self._live(upload_id, request.principal)
            raise
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_exit(holding)
            if self._visible(held.info, request.principal).final:
                raise FinalUploadPatched("a final upload's bytes are its parts': PATCH those")
            answer = await self._receive(held, request, offset)
        if held.info.partial and held.info.received_all:
            await self._finish_finals_of(upload_id, answer.published)  # concatenation-unfinished
        return answer

    async def _receive(self, held: HeldUpload, request: TusRequest, offset: int) -> TusAnswer:
        """Append the body to the held upload at ``offset``; publish it once complete."""
        info = held.info
        if info.expires_at <= self._clock():
            raise UploadGone("this upload has expired")
        if offset != info.offset:
            raise OffsetMismatch(f"Upload-Offset is {offset}, the upload's offset {info.offset}")
        info = self._with_length(info, request.headers)
        if info.received_all:
            if request.has_body:
                raise OffsetMismatch("the upload is complete: nothing more can be appended")
            return TusAnswer(204, self._upload_headers(info, request))
        checksum = parse_checksum(request.headers.get("Upload-Checksum"))
        trailed = self._trailed_checksum(request, checksum)
        completes = parse_complete(request.headers)
        room = (info.length if info.length is not None else self.max_size) - offset
        if request.content_length is not None and request.content_length > room:
            raise UploadTooLarge(f"the body is longer than the {room} bytes the upload lacks")
        body = self._checked(request.body, info, room, await self._head_for(info))
        meter = self._meter(info, kept="nothing of this request's body was kept")
        if meter is not None and info.length is not None:
            await meter.reserve(info.length)  # held whole (again: its lease renewed)
        elif meter is not None:
            body = meter.counted_after(info.offset, body)  # deferred: as the bytes arrive
        live = await self._live_ingest(info, start=request.has_body)
        if live is not None:
            body = live.tee(body)
        published: list[StoredFile] = []
        try:
            info = await self._append(held, info, body, checksum, trailed)
            if info.length is None and completes:
                self._check_length(info.offset)
                info = info.with_changes(length=info.offset)  # the draft: the length, at last
            if info.received_all and not info.partial:
                info = await self._publish(held, info, published, live)
            else:
                await held.commit(info)  # a complete part: its finals are finished when let go
        except BaseException:
            # The run goes on only if it saw just what was committed (a broken connection's
            # bytes that were kept); otherwise it saw bytes the store did not keep.
            if live is None or live.ended or live.offset != held.info.offset:
                await self._drop_live(info.id)
            raise
        return TusAnswer(204, self._upload_headers(info, request), published)

    async def _append(
        self,
        held: HeldUpload,
        info: UploadInfo,
        body: AsyncIterator[Buffer],
        checksum: Checksum | None,
        trailed: Callable[[], Mapping[str, str] | None] | None,
    ) -> UploadInfo:
        """The body appended, checked against its checksum (``trailed``: the trailer's, which
        names its algorithm only after the bytes, so all are computed); the upload's state
        after it."""
        every = EveryDigest() if trailed is not None else None
        digest = checksum.digest() if checksum is not None else every
        try:
            await held.append(body, digest=digest)
        except UnsupportedFile:  # not what its name says: the upload is refused whole
            await self._remove(held)
            raise
        except FileRefused as refused:  # the pipeline refused the file as its bytes came
            await self._remove(held)
            raise refused.error from None
        except (UploadTooLarge, InsufficientStorage, ServerBusy, OSError):
            await held.rollback()  # over its length, or the disk failed: the chunk is not kept
            raise
        except BaseException:
            # The client's connection broke, its body idled out, or the server is stopping:
            # keep what arrived (tus: store as much as possible), unless a checksum was to
            # vouch for the whole chunk.
            if digest is None and held.written:
                await held.commit(self._advanced(info, held.written))
            raise
        if every is not None and trailed is not None:
            checksum = await self._trailer_checksum(held, trailed)
            await self._verify(held, checksum, every.of(checksum.algorithm))
        elif checksum is not None and digest is not None:
            await self._verify(held, checksum, digest.digest())
        return self._advanced(info, held.written)

    def _trailed_checksum(
        self, request: TusRequest, checksum: Checksum | None
    ) -> Callable[[], Mapping[str, str] | None] | None:
        """checksum-trailer: where the body's trailers will be, if ``Trailer`` announces an
        ``Upload-Checksum``; refused (400, before any byte is kept) when it cannot come."""
        if not announces_checksum_trailer(request.headers):
            return None
        if checksum is not None:
            raise BadRequest("Upload-Checksum is sent either as a header or as a trailer")
        if request.trailers is None:
            raise BadRequest(
                "Trailer: Upload-Checksum needs a chunked body (Transfer-Encoding: chunked)"
                " on a connection that reads trailers"
            )
        return request.trailers

    async def _trailer_checksum(
        self, held: HeldUpload, trailers: Callable[[], Mapping[str, str] | None]
    ) -> Checksum:
        """The checksum the body's trailer section gave; 400 (the chunk discarded) when it is
        missing, unreadable or unsupported."""
        fields = trailers()
        try:
            if fields is None:
                raise BadRequest("the body's trailer section could not be read")
            checksum = parse_checksum(fields.get("upload-checksum"))
            if checksum is None:
                raise BadRequest("Trailer: Upload-Checksum was announced, but not sent")
        except BadRequest as error:
            await held.rollback()
            raise BadRequest(f"{error.detail}; the chunk was discarded") from None
        return checksum

    def _with_length(self, info: UploadInfo, headers: Mapping[str, str]) -> UploadInfo:
        """creation-defer-length: the first PATCH that knows the length says it, once."""
        length = parse_size(headers, "Upload-Length")
        if length is None:
            return info
        if info.length is not None:
            if length != info.length:
                raise BadRequest("Upload-Length: the upload's length is known already")
            return info
        if length < info.offset:
            raise BadRequest("Upload-Length: shorter than what was received already")
        self._check_length(length)
        return info.with_changes(length=length)

    async def _head_for(self, info: UploadInfo) -> bytes | None:
        """What was received of the file's first bytes, while they are still to check."""
        if info.partial or info.offset >= SNIFF_BYTES:
            return None
        if info.offset == 0:
            return b""  # nothing received yet: no trip to the store
        return await self.store.head(info.id, info.offset)

    def _checked(
        self, body: AsyncIterator[Buffer], info: UploadInfo, room: int, head: bytes | None
    ) -> AsyncIterator[Buffer]:
        filename = info.metadata.get("filename", "")
        max_size = self.max_size

        async def checked() -> AsyncIterator[Buffer]:
            seen = head
            received = 0
            async for chunk in body:
                received += len(chunk)
                if received > room:
                    raise UploadTooLarge(
                        f"{filename!r} is larger than its Upload-Length"
                        if info.length is not None
                        else f"{filename!r} is larger than the limit of {max_size} bytes"
                    )
                if seen is not None:
                    seen += bytes(chunk[: SNIFF_BYTES - len(seen)])
                    if len(seen) >= SNIFF_BYTES or len(seen) == info.length:
                        verify_content(extension_of(filename), seen, filename=filename)
                        seen = None  # checked: as soon as the first bytes arrived
                yield chunk

        return checked()

    async def _verify(self, held: HeldUpload, checksum: Checksum, actual: bytes) -> None:
        if actual != checksum.expected:
            await held.rollback()  # the chunk is discarded; the offset stays where it was
            raise ChecksumMismatch(
                f"the chunk's {checksum.algorithm} is not its Upload-Checksum; it was discarded"
            )

    def _advanced(self, info: UploadInfo, received: int) -> UploadInfo:
        return info.with_changes(
            offset=info.offset + received, expires_at=self._clock() + self.expiry
        )

    # -- publishing ------------------------------------------------------------------------

    async def _publish(
        self,
        held: HeldUpload,
        info: UploadInfo,
        published: list[StoredFile],
        live: LiveIngest | None,
    ) -> UploadInfo:
        """Ingest the whole upload — the end of its live run, or read back from the store —;
        its state then names the stored file, its bytes are freed. A refusal of the file (415,
        413, 409) ends the upload; any other failure (a full disk) takes the last chunk back,
        for the client to send again."""
        if live is not None:
            self._runs.pop(info.id, None)
            ingested = live.finish()
        else:
            ingested = self._ingest(info, self.store.read(info.id, info.offset), whole=True)
        try:
            stored = await ingested
        except ClustrError as error:
            if error.per_file:
                await self._remove(held)
            else:
                await held.rollback()
            raise
        except BaseException:
            await held.rollback()
            raise
        published.append(stored)
        return await self._done(held, info, stored)

    async def _done(self, held: HeldUpload, info: UploadInfo, stored: StoredFile) -> UploadInfo:
        length = info.length if info.length is not None else info.offset
        done = info.with_changes(
            offset=length,
            length=length,
            file_id=stored.id,
            expires_at=self._clock() + self.expiry,
        )
        await held.commit(done, release_data=True)  # its bytes are the stored file's now
        await self._release(info)  # its file is catalogued: it counts as such now
        return done

    async def _ingest(
        self, info: UploadInfo, chunks: AsyncIterator[Buffer], *, whole: bool
    ) -> StoredFile:
        """The upload's file through the pipeline, as its owner's (DEDUPE among theirs).
        ``whole``: ``chunks`` are the upload's data file, all of it (a live run's are, once
        they end), which the stored file is then made of where the checks leave it as it is."""
        local = self._local_data
        source = local.data_path(info.id) if whole and local is not None else None

        async def one_file() -> AsyncIterator[IncomingFile]:
            yield IncomingFile(info.metadata["filename"], chunks, source)

        [stored] = await ingest_batch(
            one_file(), self._storage, self._policy, self._catalog, owner=info.owner
        )
        return stored

    async def _finish_finals_of(self, partial_id: str, published: list[StoredFile]) -> None:
        """concatenation-unfinished: a part just completed; its finals may be whole now."""
        for final_id in await self.store.finals_of(partial_id):
            try:
                await self._finish_final(final_id, published)
            except ClustrError as error:  # the final was refused (and ended), not this part
                log.info("final upload %s refused: %s", final_id, error.detail)

    async def _finish_final(self, final_id: str, published: list[StoredFile]) -> UploadInfo | None:
        """Publish the final upload if every part is complete (None if it was busy); its
        stored file is appended to ``published``."""
        try:
            async with self.store.hold(final_id) as held:
                info = held.info
                if info.file_id is not None:
                    return info
                parts = [await self.store.get(part_id) for part_id in info.parts]
                complete = [p for p in parts if p is not None and p.received_all]
                if len(complete) < len(parts):
                    return info
                total = sum(p.offset for p in complete)
                if info.length is None:
                    self._check_length(total)
                    info = info.with_changes(length=total)
                try:
                    stored = await self._ingest(info, self._concat(complete), whole=False)
                except ClustrError as error:
                    if error.per_file:
                        await held.remove()
                    raise
                done = await self._done(held, info, stored)
                published.append(stored)
        except (UploadLocked, NotFound):
            return None
        for part in complete:  # their bytes are the stored file's now, and their reservations
            await self._release(part)
            with contextlib.suppress(UploadLocked, NotFound):
                async with self.store.hold(part.id) as held_part:
                    await held_part.remove()
        return done

    async def _concat(self, parts: Sequence[UploadInfo]) -> AsyncIterator[Buffer]:
        for part in parts:
            async for chunk in self.store.read(part.id, part.offset):
                yield chunk

    # -- DELETE: termination ---------------------------------------------------------------

    async def terminate(self, upload_id: str, request: TusRequest) -> TusAnswer:
        check_version(request.headers)
        async with self.store.hold(upload_id) as held:
            if not _sees(request.principal, held.info):
                raise NotFound("no upload has this id")
            await self._remove(held)
        return TusAnswer(204)

    # -- owners and quotas -----------------------------------------------------------------

    def _meter(self, info: UploadInfo, *, kept: str) -> QuotaMeter | None:
        """The upload's standing reservation against its creating key's quota, if it has one
        (``kept``: what a refusal says was kept)."""
        if info.owner is None or info.quota is None or self._catalog is None:
            return None
        lease = timedelta(seconds=self.expiry) + _LEASE_MARGIN
        return QuotaMeter(
            self._catalog,
            info.owner,
            info.quota,
            reservation=_reservation(info.id),
            lease=lease,
            kept=kept,
        )

    async def _release(self, info: UploadInfo) -> None:
        """Let go of the upload's reservation (stored, refused, terminated or expired)."""
        if info.quota is not None and self._catalog is not None:
            await asyncio.shield(self._catalog.release(_reservation(info.id)))

    async def _remove(self, held: HeldUpload) -> None:
        await self._drop_live(held.info.id)
        await held.remove()
        await self._release(held.info)

    # -- live ingest -----------------------------------------------------------------------

    async def _live_ingest(self, info: UploadInfo, *, start: bool) -> LiveIngest | None:
        """The upload's pipeline run in this process, if it has seen exactly the committed
        bytes (another process's requests in between: dropped); a new one for an upload's
        first bytes (``start``: the request has a body). None: the file will be read back
        once complete."""
        if info.partial:  # never published on its own
            return None
        live = self._runs.get(info.id)
        if live is not None and live.offset != info.offset:
            await self._drop_live(info.id)
            live = None
        if live is None and start and info.offset == 0 and len(self._runs) < _LIVE_RUNS:
            live = LiveIngest(functools.partial(self._ingest, info, whole=True))
            self._runs[info.id] = live
        return live

    async def _drop_live(self, upload_id: str) -> None:
        live = self._runs.pop(upload_id, None)
        if live is not None:
            await live.abort()

    async def close(self) -> None:
        """Stop every live run (their batches discarded): the server is stopping."""
        for upload_id in list(self._runs):
            await self._drop_live(upload_id)

    # -- expiration ------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Remove every expired upload that no request holds, and data a crash left without
        state; finish final uploads whose parts completed before a crash. Returns how many
        uploads were removed."""
        now = self._clock()
        removed = 0
        for upload_id in await self.store.ids():
            info = await self.store.get(upload_id)
            if info is None:
                continue
            if info.expires_at <= now:
                with contextlib.suppress(UploadLocked, NotFound):
                    async with self.store.hold(upload_id) as held:
                        if held.info.expires_at <= now:
                            await self._remove(held)
                            removed += 1
            elif info.final and info.file_id is None:
                with contextlib.suppress(ClustrError):
                    await self._finish_final(upload_id, [])
        for upload_id in list(self._runs):  # ended elsewhere (removed or published)
            info = await self.store.get(upload_id)
            if info is None or info.file_id is not None:
                await self._drop_live(upload_id)
        return removed + await self.store.sweep_orphans(now - self.expiry)


def _sees(principal: Principal, info: UploadInfo) -> bool:
    """Whether the upload is the principal's owner's (any is, for an admin or the open mode):
    another owner's upload is not found (404), as another owner's file is not."""
    return principal.sees is None or principal.sees == info.owner


def _reservation(upload_id: str) -> str:
    return f"tus-{upload_id}"
