"""The aiobotocore client, and what its failures mean to the service.

aiobotocore is botocore (request signing with SigV4, retries with back-off, the S3 protocol's
every quirk) on aiohttp, so a slow store never blocks the event loop. Every failure of the
store becomes :class:`StorageUnavailable` (503 with Retry-After): the client did nothing wrong,
and the same request may well succeed once the store answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from clustr_aio.domain.errors import StorageUnavailable
from clustr_aio.storage.s3.lean_data import lean_loader

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
else:
    S3Client = object

__all__ = [
    "S3Client",
    "S3Config",
    "error_code",
    "is_taken",
    "open_client",
    "store_errors",
]

log = logging.getLogger("clustr_aio.storage")

UNAVAILABLE: Final = "the file store is unavailable; nothing of this upload was kept, try again"
_DEFAULT_REGION: Final = "us-east-1"


@dataclass(frozen=True, kw_only=True, slots=True)
class S3Config:
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    part_size: int = 16 * 1024 * 1024
    serve: str = "redirect"
    orphan_grace: float = 86400.0
    presigned_seconds: int = 300
    """How long a redirect's presigned URL is valid: long enough to start a download, too
    short to pass around."""
    connections: int = 64
    """Connections to the store kept by this process (aiohttp's pool)."""


@asynccontextmanager
async def open_client(config: S3Config) -> AsyncIterator[S3Client]:
    """An S3 client signing with SigV4, with keys from the settings or the standard AWS chain
    (environment, profiles, instance roles)."""
    session = get_session()
    # botocore's data read lean (storage/s3/lean_data.py): 11 MiB less in every process.
    session.register_component("data_loader", lean_loader(session.get_config_variable("data_path")))
    region = config.region or session.get_config_variable("region") or _DEFAULT_REGION
    options = AioConfig(
        signature_version="s3v4",
        # Path-style for an endpoint of one's own (its host names no buckets); AWS picks.
        s3={"addressing_style": "path" if config.endpoint_url else "auto"},
        retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=5,
        read_timeout=60,
        max_pool_connections=config.connections,
        # SigV4 already signs each body's sha256 over plain HTTP, and TLS guards it otherwise:
        # a CRC32 of every part on top would be CPU spent twice.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            session.create_client(
                "s3",
                endpoint_url=config.endpoint_url,
                # A plain-HTTP endpoint has no TLS to verify; left to verify, aiobotocore would
                # still load certifi's certificates into a context no connection uses (1 MiB).
                verify=False if (config.endpoint_url or "").startswith("http:") else None,
                region_name=region,
                aws_access_key_id=config.access_key_id,
                aws_secret_access_key=config.secret_access_key,
                config=options,
            )
        )
        yield client


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def http_status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def is_taken(error: ClientError) -> bool:
    """A conditional write (``If-None-Match: *``) found the key taken: 412. A 409 is S3's
    "another conditional write to this key is under way": taken too, for our purposes."""
    return http_status(error) in (409, 412) or error_code(error) in (
        "PreconditionFailed",
        "ConditionalRequestConflict",
    )


def is_missing(error: ClientError) -> bool:
    return http_status(error) == 404 or error_code(error) in (
        "NoSuchKey",
        "NotFound",
        "NoSuchUpload",
    )


_STORE_FAILURES = (BotoCoreError, ClientError, aiohttp.ClientError, asyncio.TimeoutError, OSError)


@contextlib.contextmanager
def store_errors(what: str) -> Iterator[None]:
    """Turn a failure of the store into :class:`StorageUnavailable`, logging the cause."""
    try:
        yield
    except _STORE_FAILURES as error:
        log.error("object store: %s failed: %s", what, error)
        raise StorageUnavailable(UNAVAILABLE) from error
