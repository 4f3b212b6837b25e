"""``S3Storage``: the bucket as the service's storage, one bucket for any number of instances.

Layout (``S3_PREFIX`` before every key): ``<name>`` per stored file, ``.derived/<name>/…`` for
files made from it (:mod:`.naming`; its thumbnails, by the ``DerivedStoring`` capability),
``.ready/…`` for the readiness probe's short-lived objects. No instance keeps anything of its
own in the bucket, and none keeps anything on its disk but caches: any instance can serve,
delete or list any file, and one that dies leaves at most what a crash leaves (below).

- **Reading**: ``locate`` answers a :class:`Redirect` to a presigned GET (``S3_SERVE=redirect``,
  valid five minutes), or a :class:`Proxied` object this process streams
  (``proxy``), Range and conditional requests passed on to the store.
- **Orphans**: an object whose record was never committed (the process died between storing a
  batch and committing it) is not served (the route asks the catalog) and is removed by
  :meth:`S3Storage.sweep` once it is older than ``S3_ORPHAN_GRACE``; so are multipart uploads
  started before then and never finished, and derived files whose file has no record (a
  thumbnail stored while another instance deleted its file). Any number of instances may sweep
  at once: deleting is idempotent, and an upload in flight is younger than the grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Final, TypeVar

from botocore.exceptions import ClientError

from clustr_aio.domain.names import numbered
from clustr_aio.domain.sniff import OCTET_STREAM, type_for_extension
from clustr_aio.storage.base import (
    DerivedFile,
    Proxied,
    ReadConditions,
    Redirect,
    RemoteObject,
)
from clustr_aio.storage.s3.client import (
    S3Client,
    S3Config,
    http_status,
    is_missing,
    is_taken,
    open_client,
    store_errors,
)
from clustr_aio.storage.s3.naming import DERIVED, ObjectKeys, is_stored_name, taken_numbers
from clustr_aio.storage.s3.put import SmallPuts
from clustr_aio.storage.s3.upload import S3Batch

__all__ = ["S3Storage", "Swept"]

log = logging.getLogger("clustr_aio.storage")

_READY_PREFIX: Final = ".ready/"
_MAX_NAME_ATTEMPTS: Final = 10_000
_READ_CHUNK: Final = 256 * 1024
_DOWNLOAD_CHUNK: Final = 1024 * 1024
_IMMUTABLE: Final = "public, max-age=31536000, immutable"
_T = TypeVar("_T")
_SWEEP_CHUNK: Final = 1000
"""The orphan sweep asks the catalog about this many names at a time."""
_LISTINGS_AT_ONCE: Final = 16
"""A bulk delete lists the objects derived from this many files at once (a request each)."""


class S3Storage:
    """Open with :meth:`open`, release with :meth:`close`."""

    def __init__(self, config: S3Config) -> None:
        self.config = config
        self.keys = ObjectKeys(config.prefix)
        self.free_names = FreeNames(self)
        self.small_puts = SmallPuts(config)
        self._stack: AsyncExitStack | None = None
        self._client: S3Client | None = None

    @property
    def client(self) -> S3Client:
        assert self._client is not None, "S3Storage used before open()"
        return self._client

    async def open(self) -> None:
        """Make the client. The bucket is not asked for anything yet: a store that is down at
        start-up makes ``/readyz`` fail and uploads 503, it does not stop the server."""
        self._stack = AsyncExitStack()
        self._client = await self._stack.enter_async_context(open_client(self.config))
        await self.small_puts.open(self._client)
        self._stack.push_async_callback(self.small_puts.close)

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._stack = self._client = None

    # -- Storage ---------------------------------------------------------------------------

    def batch(self) -> S3Batch:
        return S3Batch(self)

    def content_type_of(self, key: str) -> str:
        image = type_for_extension(os.path.splitext(key)[1][1:].lower())
        return image.content_type if image else OCTET_STREAM

    # -- reading ---------------------------------------------------------------------------

    async def locate(self, name: str) -> Redirect | Proxied | None:
        if not is_stored_name(name):
            return None
        if self.config.serve == "proxy":
            return Proxied(name, self)
        return Redirect(await self.presigned_url(name))

    async def presigned_url(self, name: str) -> str:
        params = {"Bucket": self.config.bucket, "Key": self.keys.file(name)}
        if type_for_extension(os.path.splitext(name)[1][1:].lower()) is None:
            # Never rendered from the store's origin either: a download, of no type.
            params |= {
                "ResponseContentType": OCTET_STREAM,
                "ResponseContentDisposition": "attachment",
            }
        with store_errors("presigning a GET"):
            url: str = await self.client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=self.config.presigned_seconds
            )
        return url

    async def fetch(self, name: str, conditions: ReadConditions) -> RemoteObject:
        """GET the object with the request's Range and preconditions: the store decides them
        (200, 206, 304, 412, 416) against its own ETag and Last-Modified."""
        arguments: dict[str, object] = {}
        for field, header in (
            ("Range", conditions.range),
            ("IfMatch", conditions.if_match),
            ("IfNoneMatch", conditions.if_none_match),
            ("IfModifiedSince", _http_date(conditions.if_modified_since)),
            ("IfUnmodifiedSince", _http_date(conditions.if_unmodified_since)),
        ):
            if header is not None:
                arguments[field] = header
        if conditions.range is not None and conditions.if_range is not None:
            # If-Range: a Range only for the version named; S3 has no If-Range, so ask first.
            head = await self._head(name)
            if head is None:
                return RemoteObject(status=404)
            if conditions.if_range not in (head.etag, head.last_modified_text):
                del arguments["Range"]
        with store_errors("GET"):
            try:
                answer = await self.client.get_object(
                    Bucket=self.config.bucket,
                    Key=self.keys.file(name),
                    **arguments,  # type: ignore[arg-type]
                )
            except ClientError as error:
                status = http_status(error)
                if status in (304, 412, 416) or is_missing(error):
                    return RemoteObject(status=status if status != 0 else 404)
                raise
        body = answer["Body"]
        meta = answer["ResponseMetadata"]["HTTPStatusCode"]

        async def chunks() -> AsyncIterator[bytes]:
            try:
                with store_errors("reading an object"):
                    async for chunk in body.iter_chunks(_READ_CHUNK):
                        yield chunk
            finally:
                body.close()

        return RemoteObject(
            status=meta,
            size=answer.get("ContentLength"),
            etag=answer.get("ETag"),
            last_modified=answer.get("LastModified"),
            content_range=answer.get("ContentRange"),
            chunks=chunks(),
            release=body.close,
        )

    async def _head(self, name: str) -> _Head | None:
        with store_errors("HEAD"):
            try:
                answer = await self.client.head_object(
                    Bucket=self.config.bucket, Key=self.keys.file(name)
                )
            except ClientError as error:
                if is_missing(error):
                    return None
                raise
        modified = answer["LastModified"]
        return _Head(answer["ETag"], _format_http_date(modified))

    # -- Downloading -------------------------------------------------------------------------

    async def download(self, name: str, target: Path) -> None:
        """Copy the object to ``target``, 1 MiB at a time, written off the loop."""
        with store_errors("GET"):
            answer = await self.client.get_object(
                Bucket=self.config.bucket, Key=self.keys.file(name)
            )
            body = answer["Body"]
            try:
                await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
                file = await asyncio.to_thread(target.open, "xb")
                try:
                    async for chunk in body.iter_chunks(_DOWNLOAD_CHUNK):
                        await asyncio.to_thread(file.write, chunk)
                finally:
                    await asyncio.to_thread(file.close)
            except BaseException:
                await asyncio.to_thread(target.unlink, missing_ok=True)
                raise
            finally:
                body.close()

    # -- Deleting ----------------------------------------------------------------------------

    async def delete(self, names: Sequence[str]) -> None:
        """Delete the files' objects and every object derived from them, up to 1,000 keys a
        request; the derived ones are listed for :data:`_LISTINGS_AT_ONCE` files at a time."""
        stored = [name for name in dict.fromkeys(names) if is_stored_name(name)]
        keys = [self.keys.file(name) for name in stored]
        with store_errors("DELETE"):
            for start in range(0, len(stored), _LISTINGS_AT_ONCE):
                some = stored[start : start + _LISTINGS_AT_ONCE]
                listings = await asyncio.gather(*(self._derived_keys(name) for name in some))
                keys += [key for listed in listings for key in listed]
            await self._delete_keys(keys)

    async def _derived_keys(self, name: str) -> list[str]:
        return [key async for key in self._keys_under(self.keys.derived_prefix(name))]

    async def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            objects = [{"Key": key} for key in keys[start : start + 1000]]
            await self.client.delete_objects(
                Bucket=self.config.bucket,
                Delete={"Objects": objects, "Quiet": True},  # type: ignore[typeddict-item]
            )

    async def _keys_under(self, prefix: str) -> AsyncIterator[str]:
        async for key, _ in self._objects(prefix):
            yield key

    async def _objects(
        self, prefix: str, delimiter: str = ""
    ) -> AsyncIterator[tuple[str, datetime]]:
        paginator = self.client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(
            Bucket=self.config.bucket, Prefix=prefix, Delimiter=delimiter
        ):
            for item in page.get("Contents", []):
                yield item["Key"], item["LastModified"]

    # -- derived files (thumbnails…) ---------------------------------------------------------

    async def get_derived(self, name: str, variant: str) -> DerivedFile | None:
        """A file made from ``name`` (a thumbnail: small, read whole); None when none was
        stored."""
        with store_errors("GET of a derived file"):
            try:
                answer = await self.client.get_object(
                    Bucket=self.config.bucket, Key=self.keys.derived(name, variant)
                )
            except ClientError as error:
                if is_missing(error):
                    return None
                raise
            body = answer["Body"]
            try:
                data = await body.read()
            finally:
                body.close()
        return DerivedFile(data, answer.get("ContentType") or OCTET_STREAM)

    async def put_derived(self, name: str, variant: str, data: bytes, content_type: str) -> bool:
        """Store a file made from ``name`` (a thumbnail) unless it is there already
        (``If-None-Match: *``: instances rendering the same thumbnail at once store it once,
        and the same inputs make the same bytes); it is deleted with ``name``. Its key names
        its content, so it never changes: ``immutable`` for whoever reads it from the store."""
        with store_errors("PUT of a derived file"):
            try:
                await self.client.put_object(
                    Bucket=self.config.bucket,
                    Key=self.keys.derived(name, variant),
                    Body=data,
                    ContentType=content_type,
                    CacheControl=_IMMUTABLE,
                    IfNoneMatch="*",
                )
            except ClientError as error:
                if is_taken(error):
                    return False
                raise
        return True

    # -- ReadinessReporting ------------------------------------------------------------------

    async def check_writable(self) -> None:
        """Write and delete a probe object: the bucket is reachable, and these keys may write.
        Raises ``OSError`` when not."""
        key = f"{self.config.prefix}{_READY_PREFIX}{uuid.uuid4().hex}"
        try:
            await self.client.put_object(Bucket=self.config.bucket, Key=key, Body=b"")
            await self.client.delete_object(Bucket=self.config.bucket, Key=key)
        except ClientError as error:
            raise OSError(f"the bucket refused a write: {error}") from None
        except Exception as error:
            raise OSError(f"the bucket is unreachable: {error}") from None

    # -- orphans -----------------------------------------------------------------------------

    async def sweep(self, recorded: Callable[[Collection[str]], Awaitable[set[str]]]) -> Swept:
        """Remove objects that have no record and are older than ``S3_ORPHAN_GRACE`` (with
        what was derived from them), and abort multipart uploads started before then.
        ``recorded(names)`` answers which of ``names`` have a record."""
        with store_errors("sweeping orphans"):
            return await self._sweep(recorded)

    async def _sweep(self, recorded: Callable[[Collection[str]], Awaitable[set[str]]]) -> Swept:
        # The bucket is walked a chunk of keys at a time, never held whole: every instance
        # sweeps, every half grace, and a million names were 90 MB each time.
        cutoff = time.time() - self.config.orphan_grace
        orphans = 0
        async for old in _chunks(self._names_older_than(cutoff), _SWEEP_CHUNK):
            known = await recorded(old)
            unrecorded = [name for name in old if name not in known]
            await self.delete(unrecorded)
            orphans += len(unrecorded)
        async for key, modified in self._objects(self.config.prefix + _READY_PREFIX):
            if modified.timestamp() < cutoff:  # a probe whose delete never came
                await self.client.delete_object(Bucket=self.config.bucket, Key=key)
        # Derived files (thumbnails) of a file deleted while another instance was making them.
        async for pairs in _chunks(self._derived_older_than(cutoff), _SWEEP_CHUNK):
            derived: dict[str, list[str]] = {}
            for made_from, key in pairs:
                derived.setdefault(made_from, []).append(key)
            known = await recorded(list(derived))
            unrecorded = [key for name in derived if name not in known for key in derived[name]]
            await self._delete_keys(unrecorded)
        aborted = 0
        paginator = self.client.get_paginator("list_multipart_uploads")
        async for page in paginator.paginate(Bucket=self.config.bucket, Prefix=self.config.prefix):
            for upload in page.get("Uploads", []):
                if upload["Initiated"].timestamp() < cutoff:
                    with contextlib.suppress(ClientError):
                        await self.client.abort_multipart_upload(
                            Bucket=self.config.bucket,
                            Key=upload["Key"],
                            UploadId=upload["UploadId"],
                        )
                    aborted += 1
        return Swept(orphans=orphans, aborted_uploads=aborted)

    async def _names_older_than(self, cutoff: float) -> AsyncIterator[str]:
        """The stored files' names whose object is older than ``cutoff`` (a Unix time)."""
        async for key, modified in self._objects(self.config.prefix, delimiter="/"):
            name = self.keys.name_of(key)
            if name is not None and modified.timestamp() < cutoff:
                yield name

    async def _derived_older_than(self, cutoff: float) -> AsyncIterator[tuple[str, str]]:
        """(the stored file's name, the key) of each derived object older than ``cutoff``."""
        async for key, modified in self._objects(self.keys.prefix + DERIVED):
            made_from = self.keys.derived_from(key)
            if made_from is not None and modified.timestamp() < cutoff:
                yield made_from, key


async def _chunks(items: AsyncIterator[_T], size: int) -> AsyncIterator[list[_T]]:
    chunk: list[_T] = []
    async for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass(frozen=True, slots=True)
class Swept:
    orphans: int
    """Objects without a record, removed."""
    aborted_uploads: int
    """Unfinished multipart uploads, aborted."""


@dataclass(frozen=True, slots=True)
class _Head:
    etag: str
    last_modified_text: str


class FreeNames:
    """Takes the first free numbered alternative of a name with conditional writes. The hint
    of where to start is only a hint: the store's ``If-None-Match: *`` decides."""

    def __init__(self, storage: S3Storage) -> None:
        self._storage = storage
        self._next: dict[str, int] = {}

    async def take(self, desired: str, attempt: Callable[[str], Awaitable[str | None]]) -> str:
        """``attempt(key)`` writes ``key`` if it is free (not None) or finds it taken (None).

        After a 412 the alternatives are listed and the next attempt goes past every one
        listed, and past those this process is trying already: with two instances uploading
        the same name at once, an upload costs a few attempts, not one per name taken."""
        n = self._next.get(desired, 0)
        for _ in range(_MAX_NAME_ATTEMPTS):
            self._next[desired] = max(self._next.get(desired, 0), n + 1)
            name = numbered(desired, n)
            if await attempt(self._storage.keys.file(name)) is not None:
                return name
            taken = await self._taken(desired)
            n = self._next[desired]
            while n in taken:
                n += 1
        raise FileExistsError(f"no free name found for {desired!r}")

    async def _taken(self, desired: str) -> set[int]:
        keys = self._storage.keys
        with store_errors("listing names"):
            names = [
                name
                async for key in self._storage._keys_under(keys.numbered_prefix(desired))
                if (name := keys.name_of(key)) is not None
            ]
        return taken_numbers(desired, names)

    def forget(self, desired: str) -> None:
        self._next.pop(desired, None)


def _http_date(value: str | None) -> datetime | None:
    """An HTTP date as botocore wants it; None for none, or one that is no date (ignored, as
    RFC 9110 says of an invalid If-Modified-Since)."""
    if value is None:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None


def _format_http_date(value: datetime) -> str:
    return format_datetime(value.astimezone(UTC), usegmt=True)
