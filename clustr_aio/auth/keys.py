"""API keys: made, hashed, looked up, described. A key is ``clustr_`` and 256 random bits
(base64url): the prefix lets secret scanners recognise a leaked one. Only its SHA-256 is
stored: a key has too much entropy to be guessed from its hash, so neither salt nor a slow hash
adds anything, and a lookup by hash is one index probe.

:class:`KeyRing` authenticates a presented key on every request: it keeps the keys it found in
the catalog only while no key has been revoked anywhere (the catalog's keys generation), so a
key revoked by one process, or by the CLI, is refused by every process from its next request
on.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from clustr_aio.auth.scopes import ADMIN, SCOPES, parse_scopes
from clustr_aio.catalog.base import Catalog, KeyRecord
from clustr_aio.domain.errors import BadRequest, Conflict, Unauthorized

__all__ = [
    "KEY_PREFIX",
    "OPEN",
    "KeyRing",
    "Principal",
    "create_key",
    "hash_key",
    "new_key",
    "parse_duration",
    "parse_key_name",
]

KEY_PREFIX: Final = "clustr_"
_KEY_BYTES: Final = 32
_TOUCH_EVERY: Final = 60.0
"""Seconds between two notes of a key's last use by one process: a write per request would
cost more than the request."""
_KEPT_KEYS: Final = 4096
"""Keys a worker keeps at most (each one verified); more are dropped all at once."""
_NOT_VALID: Final = "this API key is not valid (unknown or revoked)"
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}", re.ASCII)


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(_KEY_BYTES)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def parse_key_name(text: str, what: str = "name") -> str:
    if not _NAME.fullmatch(text):
        raise BadRequest(
            f"{what}: 1-128 of A-Z a-z 0-9 . _ @ -, starting with a letter or digit; got {text!r}"
        )
    return text


_DURATION: Final = re.compile(r"(\d+)\s*([smhdw])", re.ASCII)
_DURATION_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``2w``, ``3600s``."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None or int(match[1]) < 1:
        raise ValueError(f"expected a duration such as 30d, 12h or 90m, got {text!r}")
    return timedelta(seconds=int(match[1]) * _DURATION_UNITS[match[2]])


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: a key's name, owner, scopes and quota; :data:`OPEN` in the open mode."""

    name: str | None
    owner: str | None
    scopes: frozenset[str]
    quota: int | None = None

    @property
    def sees(self) -> str | None:
        """The owner whose files this principal sees, or None for every file (admin, open)."""
        return None if ADMIN in self.scopes else self.owner

    @property
    def label(self) -> str:
        """For the logs: the key's name (never the key), or how it was not identified."""
        return self.name if self.name is not None else "-"


OPEN: Final = Principal(name=None, owner=None, scopes=frozenset(SCOPES))


async def create_key(
    catalog: Catalog,
    name: str,
    scopes: Iterable[str] | str,
    *,
    owner: str | None = None,
    expires_in: timedelta | None = None,
    quota: int | None = None,
) -> tuple[str, KeyRecord]:
    """Make and store a key; the key itself (shown once, never stored) and its record."""
    parse_key_name(name)
    if owner is not None:
        parse_key_name(owner, "owner")
    try:
        granted = parse_scopes(scopes)
    except ValueError as error:
        raise BadRequest(f"scopes: {error}") from None
    if quota is not None and quota < 1:
        raise BadRequest("quota: at least 1 byte")
    now = datetime.now(UTC)
    key = new_key()
    record = KeyRecord(
        name=name,
        key_hash=hash_key(key),
        scopes=granted,
        owner=owner or name,
        created_at=now,
        expires_at=None if expires_in is None else now + expires_in,
        quota=quota,
    )
    if not await catalog.add_key(record):
        raise Conflict(f"an API key named {name!r} exists already")
    return key, record


@dataclass(frozen=True, slots=True)
class _Verified:
    """A key found in the catalog, as a worker keeps it while no key is revoked."""

    key_hash: str
    principal: Principal
    expires_at: float | None
    """POSIX time."""


class KeyRing:
    """Authenticates presented keys against the catalog, keeping the keys it found while the
    catalog's :meth:`~clustr_aio.catalog.base.Catalog.keys_generation` stays the same: a
    revocation in any process changes it, so every worker refuses a revoked key from its next
    request on, and a key in use costs a dictionary look-up instead of a query. Keys not found
    are never kept: each wrong key asks the catalog (and is rate limited by address)."""

    def __init__(
        self, catalog: Callable[[], Catalog], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._catalog = catalog
        self._clock = clock
        self._touched: dict[str, float] = {}
        self._verified: dict[str, _Verified] = {}
        self._generation: int | None = None

    async def authenticate(self, presented: str | None) -> Principal:
        if not presented:
            raise Unauthorized("an API key is needed: Authorization: Bearer <key> or X-API-Key")
        digest = hash_key(presented)
        catalog = self._catalog()
        generation = catalog.keys_generation()  # before the look-up: see Catalog
        if generation is None or generation != self._generation:
            self._verified.clear()
            self._generation = generation
        known = self._verified.get(digest)
        if known is None:
            known = await self._look_up(catalog, digest)
            # Kept only if no revocation began meanwhile (the look-up may have waited).
            if generation is not None and generation == self._generation:
                if len(self._verified) >= _KEPT_KEYS:
                    self._verified.clear()
                self._verified[digest] = known
        # Found by the hash, so it matches; compare anyway, in constant time, so that no code
        # path ever compares key material byte by byte.
        if not hmac.compare_digest(known.key_hash, digest):
            raise Unauthorized(_NOT_VALID)
        principal = known.principal
        if known.expires_at is not None and known.expires_at <= time.time():
            raise Unauthorized(f"API key {principal.name!r} expired")
        await self._touch(catalog, principal.name)
        return principal

    @staticmethod
    async def _look_up(catalog: Catalog, digest: str) -> _Verified:
        record = await catalog.key_by_hash(digest)
        if record is None or not hmac.compare_digest(record.key_hash, digest):
            raise Unauthorized(_NOT_VALID)
        return _Verified(
            record.key_hash,
            Principal(record.name, record.owner, record.scopes, record.quota),
            None if record.expires_at is None else record.expires_at.timestamp(),
        )

    async def _touch(self, catalog: Catalog, name: str | None) -> None:
        assert name is not None  # a key's principal has its name
        moment = self._clock()
        last = self._touched.get(name)
        if last is not None and moment - last < _TOUCH_EVERY:
            return
        self._touched[name] = moment
        await catalog.touch_key(name, datetime.now(UTC))
