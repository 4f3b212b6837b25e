"""Liveness, readiness and metrics for supervisors, load balancers and Prometheus.

- ``GET /healthz``: the process is alive and its event loop answers. Nothing else is checked,
  so a full disk never gets a live server restarted.
- ``GET /readyz``: uploads can succeed right now: a file can be created and published in the
  upload folder, and free space is above ``MIN_FREE_SPACE``. 503 with a ``detail`` otherwise,
  so a load balancer sends uploads elsewhere until an operator has made room.
- ``GET /metrics``: Prometheus text (or OpenMetrics) from :mod:`clustr_aio.metrics`.
"""

from __future__ import annotations

from aiohttp import web

from clustr_aio.keys import METRICS, SETTINGS, STORAGE
from clustr_aio.responses import error_response
from clustr_aio.storage.base import ReadinessReporting, SpaceReporting

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    storage = request.app[STORAGE]
    reserve = request.app[SETTINGS].min_free_space
    try:
        if isinstance(storage, ReadinessReporting):
            await storage.check_writable()
        free = await storage.free_space() if isinstance(storage, SpaceReporting) else None
    except OSError as error:
        reason = error.strerror or str(error)
        return error_response(503, f"not ready: the upload folder is not writable: {reason}")
    if free is not None and free < reserve:
        return error_response(
            503,
            f"not ready: {free} bytes free in the upload folder, less than MIN_FREE_SPACE"
            f" ({reserve} bytes)",
        )
    return web.json_response({"status": "ready"})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.StreamResponse:
    return await request.app[METRICS].handler(request)
