"""Liveness, readiness and metrics for supervisors, load balancers and Prometheus.

- ``GET /healthz``: the process is alive and its event loop answers. Nothing else is checked,
  so a full disk never gets a live server restarted.
- ``GET /readyz``: uploads can succeed right now: a file can be created and published in the
  upload folder (with ``STORAGE=s3``: an object written to and deleted from the bucket), free
  space is above ``MIN_FREE_SPACE``, and the catalog answers a query. 503 with a ``detail``
  otherwise, so a load balancer sends uploads elsewhere until an operator has made room (or the
  database is back).
- ``GET /metrics``: Prometheus text (or OpenMetrics) from :mod:`clustr_aio.observability.metrics`.
"""

from __future__ import annotations

from aiohttp import web

from clustr_aio.auth.keys import OPEN
from clustr_aio.auth.scopes import ADMIN
from clustr_aio.domain.errors import CatalogUnavailable, Forbidden, Unauthorized
from clustr_aio.storage.base import ReadinessReporting, SpaceReporting
from clustr_aio.web.base_url import client_address, is_trusted
from clustr_aio.web.guard import presented_key
from clustr_aio.web.keys import CATALOG, GUARD, METRICS, SETTINGS, STORAGE
from clustr_aio.web.openapi import operation
from clustr_aio.web.openapi.schemas import error_response as documented_error
from clustr_aio.web.openapi.schemas import json_response
from clustr_aio.web.responses import error_response, json_answer

routes = web.RouteTableDef()


def _status(value: str) -> dict[str, object]:
    return {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string", "const": value}},
    }


@routes.get("/healthz")
@operation(
    summary="Liveness",
    description="The process is alive and its event loop answers; nothing else is checked, so "
    "a full disk never gets a live server restarted.",
    tags=("service",),
    responses={200: json_response("Alive.", _status("ok"))},
)
async def healthz(request: web.Request) -> web.Response:
    return json_answer({"status": "ok"})


@routes.get("/readyz")
@operation(
    summary="Readiness",
    description="Uploads can succeed right now: a file can be created and published in the "
    "upload folder, free space is above MIN_FREE_SPACE, and the catalog's database answers. "
    "A load balancer should send uploads elsewhere while this answers 503.",
    tags=("service",),
    responses={
        200: json_response("Ready.", _status("ready")),
        503: documented_error(
            "Not ready: the upload folder (or bucket) is not writable, free space is below "
            "MIN_FREE_SPACE, or the catalog cannot be reached.",
            "not ready: the upload folder is not writable: Permission denied",
        ),
    },
)
async def readyz(request: web.Request) -> web.Response:
    storage = request.app[STORAGE]
    reserve = request.app[SETTINGS].min_free_space
    try:
        if isinstance(storage, ReadinessReporting):
            await storage.check_writable()
        free = await storage.free_space() if isinstance(storage, SpaceReporting) else None
    except OSError as error:
        reason = error.strerror or str(error)
        where = "the bucket" if request.app[SETTINGS].storage == "s3" else "the upload folder"
        return error_response(503, f"not ready: {where} is not writable: {reason}")
    if free is not None and free < reserve:
        return error_response(
            503,
            f"not ready: {free} bytes free in the upload folder, less than MIN_FREE_SPACE"
            f" ({reserve} bytes)",
        )
    try:
        await request.app[CATALOG].check()
    except CatalogUnavailable as error:
        return error_response(503, f"not ready: {error.detail}")
    return json_answer({"status": "ready"})


@routes.get("/metrics")
@operation(
    summary="Prometheus metrics",
    description="Prometheus text format, or OpenMetrics when the `Accept` header asks for "
    "`application/openmetrics-text`; gzip with `Accept-Encoding: gzip`. When METRICS_ALLOW is "
    "set, only to the addresses in it and (AUTH=keys) to admin keys; 403 to others.",
    tags=("service",),
    parameters=(
        {
            "name": "name[]",
            "in": "query",
            "required": False,
            "description": "Only these metric families.",
            "schema": {"type": "array", "items": {"type": "string"}},
            "style": "form",
            "explode": True,
        },
    ),
    responses={
        200: {
            "description": "The metrics.",
            "content": {
                "text/plain": {"schema": {"type": "string"}},
                "application/openmetrics-text": {"schema": {"type": "string"}},
            },
        },
        403: documented_error(
            "METRICS_ALLOW is set, and the client's address is not in it.",
            "metrics are only served to the addresses in METRICS_ALLOW",
        ),
    },
)
async def metrics(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    # The connection's own peer: a forwarded address could be anyone's claim.
    allowed = settings.metrics_allow
    if allowed and not is_trusted(request.remote, allowed) and not await _admin_key(request):
        error = Forbidden(
            "metrics are only served to the addresses in METRICS_ALLOW"
            + (" and to admin keys" if settings.auth == "keys" else "")
        )
        request.app[GUARD].refused(error, OPEN, client_address(request))
        raise error
    return await request.app[METRICS].handler(request)


async def _admin_key(request: web.Request) -> bool:
    """AUTH=keys: whether the request carries a valid key with the admin scope."""
    guard = request.app[GUARD]
    if not guard.keys_required or presented_key(request.headers) is None:
        return False
    try:
        principal = await guard.keyring.authenticate(presented_key(request.headers))
    except Unauthorized:
        return False
    return ADMIN in principal.scopes
