"""One log line per request, carrying the request id."""

from __future__ import annotations

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from clustr_aio.web.keys import REQUEST_ID


class AccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        rid = request.get(REQUEST_ID, "-")
        self.logger.info(
            '%s "%s %s" %d %d %.1fms id=%s',
            request.remote,
            request.method,
            request.path_qs,
            response.status,
            response.body_length,
            time * 1000,
            rid,
            extra={"request_id": request.get(REQUEST_ID)},
        )
