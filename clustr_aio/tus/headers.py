"""The tus 1.0.0 headers as text in, checked values out (and back). Pure functions, no I/O.

Every refusal is a :class:`~clustr_aio.domain.errors.ClustrError` with the status the protocol
names for it; nothing a client sent is echoed back into an error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import formatdate
from typing import Final

from clustr_aio.domain.errors import BadRequest, UnsupportedProtocolVersion
from clustr_aio.storage.base import Buffer
from clustr_aio.storage.resumable import Digest

TUS_VERSION: Final = "1.0.0"
EXTENSIONS: Final = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "expiration",
    "checksum",
    "checksum-trailer",
    "termination",
    "concatenation",
    "concatenation-unfinished",
)
CHECKSUM_TRAILER: Final = "checksum-trailer"
"""Offered only where the connection reads trailers (see :mod:`clustr_aio.web.trailers`)."""
CHECKSUM_ALGORITHMS: Final = ("sha1", "sha256", "md5")
OFFSET_OCTET_STREAM: Final = "application/offset+octet-stream"
DRAFT_INTEROP_VERSION: Final = "6"
"""The IETF "Resumable Uploads for HTTP" draft, as tus-js-client's ``protocol: 'ietf-draft-05'``
speaks it (``Upload-Draft-Interop-Version: 6``): the same exchange as tus, other header names."""
PARTIAL_UPLOAD: Final = "application/partial-upload"

MAX_METADATA_PAIRS: Final = 32
MAX_METADATA_VALUE: Final = 4096
"""Characters per decoded value: a file name or a type, not a payload."""
_KEY: Final = re.compile(r"[A-Za-z0-9._~!$&'*+^`|-]{1,64}")
_DIGITS: Final = re.compile(r"[0-9]{1,19}")


def speaks_draft(headers: Mapping[str, str]) -> bool:
    return headers.get("Upload-Draft-Interop-Version") == DRAFT_INTEROP_VERSION


def check_version(headers: Mapping[str, str]) -> None:
    """412 (with Tus-Version) unless the request speaks tus 1.0.0 (or the IETF draft)."""
    if speaks_draft(headers):
        return
    version = headers.get("Tus-Resumable")
    if version != TUS_VERSION:
        said = "no Tus-Resumable header" if version is None else "another Tus-Resumable version"
        raise UnsupportedProtocolVersion(f"{said}: this server speaks tus {TUS_VERSION}")


def parse_size(headers: Mapping[str, str], name: str) -> int | None:
    """A non-negative integer header (Upload-Length, Upload-Offset); None when absent."""
    text = headers.get(name)
    if text is None:
        return None
    text = text.strip()
    if not _DIGITS.fullmatch(text):
        raise BadRequest(f"{name}: expected a non-negative integer")
    return int(text)


def parse_complete(headers: Mapping[str, str]) -> bool | None:
    """The draft's ``Upload-Complete``: ``?1`` (this request ends the upload) or ``?0``."""
    text = headers.get("Upload-Complete")
    if text is None:
        return None
    if text.strip() not in ("?0", "?1"):
        raise BadRequest("Upload-Complete: expected ?0 or ?1")
    return text.strip() == "?1"


def parse_metadata(text: str | None) -> dict[str, str]:
    """``Upload-Metadata: key base64,key2 base64,flag``: the pairs decoded (UTF-8), control
    characters and unpaired surrogates dropped, each value at most ``MAX_METADATA_VALUE``."""
    if text is None or not text.strip():
        return {}
    pairs = text.split(",")
    if len(pairs) > MAX_METADATA_PAIRS:
        raise BadRequest(f"Upload-Metadata: at most {MAX_METADATA_PAIRS} pairs")
    metadata: dict[str, str] = {}
    for pair in pairs:
        key, _, encoded = pair.strip().partition(" ")
        if not _KEY.fullmatch(key):
            raise BadRequest("Upload-Metadata: a key is not a token of at most 64 characters")
        if key in metadata:
            raise BadRequest(f"Upload-Metadata: the key {key!r} is given twice")
        try:
            raw = base64.b64decode(encoded.strip(), validate=True)
            value = raw.decode()
        except (binascii.Error, ValueError):
            raise BadRequest(f"Upload-Metadata: {key!r} is not base64 of UTF-8 text") from None
        value = sanitised(value)
        if len(value) > MAX_METADATA_VALUE:
            raise BadRequest(f"Upload-Metadata: {key!r} is over {MAX_METADATA_VALUE} characters")
        metadata[key] = value
    return metadata


def sanitised(value: str) -> str:
    """NFC text without control or format characters (bidi overrides, NUL, newlines…)."""
    normal = unicodedata.normalize("NFC", value)
    return "".join(c for c in normal if unicodedata.category(c)[0] != "C")


def encode_metadata(metadata: Mapping[str, str]) -> str:
    return ",".join(
        f"{key} {base64.b64encode(value.encode()).decode()}" if value else key
        for key, value in metadata.items()
    )


@dataclass(frozen=True, slots=True)
class Checksum:
    """``Upload-Checksum: sha1 <base64 digest>``: what a chunk's bytes must hash to."""

    algorithm: str
    expected: bytes

    def digest(self) -> Digest:
        return hashlib.new(self.algorithm)


class EveryDigest:
    """Every supported algorithm's running hash of the same bytes: a checksum sent as a trailer
    names its algorithm only after them. :meth:`digest` is theirs concatenated, in
    :data:`CHECKSUM_ALGORITHMS`' order; :meth:`of` one of them."""

    def __init__(self) -> None:
        self._digests = {name: hashlib.new(name) for name in CHECKSUM_ALGORITHMS}

    def update(self, data: Buffer, /) -> None:
        for running in self._digests.values():
            running.update(data)

    def digest(self) -> bytes:
        return b"".join(running.digest() for running in self._digests.values())

    def of(self, algorithm: str) -> bytes:
        return self._digests[algorithm].digest()


def announces_checksum_trailer(headers: Mapping[str, str]) -> bool:
    """``Trailer: Upload-Checksum``: the request's checksum comes after its body."""
    announced = headers.get("Trailer", "")
    return any(name.strip().lower() == "upload-checksum" for name in announced.split(","))


def parse_checksum(text: str | None) -> Checksum | None:
    """400 for an algorithm this server does not compute, or a digest that is not base64."""
    if text is None:
        return None
    algorithm, _, encoded = text.strip().partition(" ")
    if algorithm.lower() not in CHECKSUM_ALGORITHMS:
        supported = ", ".join(CHECKSUM_ALGORITHMS)
        raise BadRequest(f"Upload-Checksum: unsupported algorithm; supported: {supported}")
    try:
        expected = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        raise BadRequest("Upload-Checksum: the digest is not base64") from None
    if len(expected) != hashlib.new(algorithm.lower()).digest_size:
        raise BadRequest(f"Upload-Checksum: not the length of a {algorithm.lower()} digest")
    return Checksum(algorithm.lower(), expected)


@dataclass(frozen=True, slots=True)
class Concat:
    """``Upload-Concat: partial`` or ``final;<url> <url>…`` (the parts' ids, in order)."""

    partial: bool
    parts: tuple[str, ...] = ()


def parse_concat(text: str | None) -> Concat | None:
    if text is None:
        return None
    text = text.strip()
    if text == "partial":
        return Concat(partial=True)
    kind, _, urls = text.partition(";")
    if kind != "final":
        raise BadRequest("Upload-Concat: expected partial, or final;<upload URLs>")
    parts = tuple(url.rstrip("/").rsplit("/", 1)[-1] for url in urls.split())
    if not parts:
        raise BadRequest("Upload-Concat: a final upload names its partial uploads")
    return Concat(partial=False, parts=parts)


def http_date(moment: float) -> str:
    """``Upload-Expires``: an HTTP-date (RFC 9110 section 5.6.7)."""
    return formatdate(moment, usegmt=True)
