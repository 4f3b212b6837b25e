"""One log line per request, carrying the request id."""

from __future__ import annotations

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from clustr_aio.web.keys import REQUEST_ID


class AccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.log_line(
            request.remote,
            request.method,
            request.path_qs,
            response.status,
            response.body_length,
            time,
            request.get(REQUEST_ID),
        )

    def log_line(
        self,
        remote: str | None,
        method: str,
        target: str,
        status: int,
        length: int,
        seconds: float,
        request_id: str | None,
    ) -> None:
        """The line, for a request answered without a request object (see
        :mod:`clustr_aio.web.quick`) as for any other."""
        self.logger.info(
            '%s "%s %s" %d %d %.1fms id=%s',
            remote,
            method,
            target,
            status,
            length,
            seconds * 1000,
            request_id or "-",
            extra={"request_id": request_id},
        )
