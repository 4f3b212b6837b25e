"""Who may call a route, and how often: each handler declares the scopes it needs with
:func:`requires`, beside its route and its OpenAPI operation (the document's security
requirements are read from the same declaration); :class:`Guard` admits a request to such a
route — its key (AUTH=keys), its rate limits — or refuses it with a domain error (401, 403,
429), logged with the key's name and counted. Routes without a declaration (``/``, health,
docs, ``/uploads``) are never asked for a key.

The middleware and the response hook that apply it to requests are in
:mod:`clustr_aio.web.middlewares`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from aiohttp import hdrs, web
from multidict import CIMultiDictProxy

from clustr_aio.auth.keys import OPEN, KeyRing, Principal
from clustr_aio.auth.ratelimit import Decision, Rate, SharedBuckets
from clustr_aio.auth.scopes import Scope, allows
from clustr_aio.catalog.base import Catalog
from clustr_aio.domain.errors import (
    ClustrError,
    Forbidden,
    QuotaExceeded,
    RateLimited,
    Unauthorized,
)
from clustr_aio.observability.metrics import Metrics
from clustr_aio.settings import Settings

__all__ = ["BUCKETS_FILE", "Access", "Guard", "RateState", "access_for", "requires"]

log = logging.getLogger("clustr_aio.auth")

Handler = TypeVar("Handler", bound=Callable[..., Any])

BUCKETS_FILE: Final = ".ratelimits"
"""The rate limits' shared table, in UPLOAD_FOLDER (a dot-name: never served, never adopted)."""
_ATTRIBUTE: Final = "__clustr_access__"
REQUESTS_POLICY: Final = "requests"
UPLOAD_POLICY: Final = "upload-bytes"


@dataclass(frozen=True, slots=True)
class Access:
    """A route's requirement: a key holding any one of ``scopes`` (admin holds them all)."""

    scopes: tuple[Scope, ...]
    signed_urls: bool = False
    """With PUBLIC_FILES=false, a URL the API signed (a thumbnail's) admits too, without a key:
    an ``<img>`` sends none. Without a key option (AUTH=off), only a signed URL admits."""


def requires(*scopes: Scope, signed_urls: bool = False) -> Callable[[Handler], Handler]:
    """Declare, on a handler, the scopes its route needs (any one of them)."""
    access = Access(scopes, signed_urls)

    def declare(handler: Handler) -> Handler:
        setattr(handler, _ATTRIBUTE, access)
        return handler

    return declare


def access_for(route: web.AbstractRoute) -> Access | None:
    found = getattr(route.handler, _ATTRIBUTE, None)
    return found if isinstance(found, Access) else None


@dataclass(slots=True)
class RateState:
    """A request's rate-limit decisions, for its ``RateLimit`` header: policy name, decision."""

    decisions: list[tuple[str, Decision]] = field(default_factory=list)
    upload_charged: bool = False


def presented_key(headers: CIMultiDictProxy[str]) -> str | None:
    """``Authorization: Bearer <key>``, else ``X-API-Key: <key>``."""
    authorization = headers.get(hdrs.AUTHORIZATION, "")
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return headers.get("X-API-Key", "").strip() or None


class Guard:
    """The application's keys and rate limits. :meth:`open` once serving (after any fork)."""

    def __init__(self, settings: Settings, metrics: Metrics, catalog: Callable[[], Catalog]):
        self.keys_required = settings.auth == "keys"
        self.metrics = metrics
        self.keyring = KeyRing(catalog)
        self.request_rate = _rate(settings.rate_limit_requests)
        self.upload_rate = _rate(settings.rate_limit_upload_bytes)
        self._buckets_path = settings.upload_folder / BUCKETS_FILE
        self._buckets: SharedBuckets | None = None

    @property
    def limits_rates(self) -> bool:
        return self.request_rate is not None or self.upload_rate is not None

    def open(self) -> None:
        if self.limits_rates:
            self._buckets = SharedBuckets(Path(self._buckets_path))

    def close(self) -> None:
        if self._buckets is not None:
            self._buckets.close()
            self._buckets = None

    async def admit(
        self, access: Access, headers: CIMultiDictProxy[str], address: str, state: RateState
    ) -> Principal:
        """The request's principal, or a refusal: 401 (before anything else is looked at,
        but after the client address's rate limit, so guessing keys is limited too), 429,
        403 naming the scopes."""
        principal, refusal = OPEN, None
        if self.keys_required:
            try:
                principal = await self.keyring.authenticate(presented_key(headers))
            except Unauthorized as error:
                refusal = error
        identity = f"key:{principal.name}" if principal.name is not None else f"ip:{address}"
        try:
            if self.request_rate is not None:
                self._take(REQUESTS_POLICY, identity, self.request_rate, 1, state)
            if refusal is not None:
                raise refusal
            if not allows(principal.scopes, access.scopes):
                raise Forbidden(
                    f"API key {principal.name!r} lacks the scope this needs: "
                    + " or ".join(access.scopes)
                )
        except ClustrError as error:
            self.refused(error, principal, address)
            raise
        return principal

    def charge_upload(
        self, principal: Principal, address: str, size: int, state: RateState, *, debt: bool
    ) -> None:
        """Take ``size`` bytes from the upload rate (``debt``: bytes already received)."""
        if self.upload_rate is None or size <= 0:
            return
        identity = f"key:{principal.name}" if principal.name is not None else f"ip:{address}"
        try:
            self._take(UPLOAD_POLICY, identity, self.upload_rate, size, state, debt=debt)
        except ClustrError as error:
            self.refused(error, principal, address)
            raise

    def _take(
        self,
        policy: str,
        identity: str,
        rate: Rate,
        cost: int,
        state: RateState,
        *,
        debt: bool = False,
    ) -> None:
        assert self._buckets is not None, "Guard used before open()"
        decision = self._buckets.take(f"{policy}:{identity}", rate, cost, debt=debt)
        state.decisions = [d for d in state.decisions if d[0] != policy] + [(policy, decision)]
        if not decision.allowed:
            raise RateLimited(
                f"rate limit of {rate.amount} {_unit(policy)} per {rate.seconds} s reached;"
                f" retry after {decision.retry_after} s",
                retry_after=decision.retry_after,
            )

    def refused(
        self, error: ClustrError, principal: Principal, address: str, reason: str | None = None
    ) -> None:
        """Log and count a refusal: the key's name, never the key."""
        reason = reason or _REASONS.get(type(error), "other")
        self.metrics.count_auth_refusal(reason)
        log.warning(
            "refused (%s, %d): key %s, client %s: %s",
            reason,
            error.status,
            principal.label,
            address,
            error.detail,
        )

    def policies(self, names: Sequence[str]) -> str:
        """``RateLimit-Policy`` for these policies (IETF httpapi ratelimit-headers draft)."""
        items = []
        for name in names:
            rate = self.request_rate if name == REQUESTS_POLICY else self.upload_rate
            if rate is not None:
                unit = ';qu="content-bytes"' if name == UPLOAD_POLICY else ""
                items.append(f'"{name}";q={rate.amount}{unit};w={rate.seconds}')
        return ", ".join(items)


def rate_limit_header(state: RateState) -> str:
    """``RateLimit``: what is left of each policy, and seconds until it is whole again."""
    return ", ".join(
        f'"{name}";r={decision.remaining};t={decision.reset}' for name, decision in state.decisions
    )


def _rate(setting: tuple[int, int] | None) -> Rate | None:
    return None if setting is None else Rate(*setting)


def _unit(policy: str) -> str:
    return "bytes" if policy == UPLOAD_POLICY else "requests"


_REASONS: Final[dict[type[ClustrError], str]] = {
    Unauthorized: "unauthorized",
    Forbidden: "forbidden",
    RateLimited: "rate_limited",
    QuotaExceeded: "quota_exceeded",
}
