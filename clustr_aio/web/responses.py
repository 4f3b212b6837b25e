"""The JSON error body every client sees, FastAPI-shaped: ``{"detail": "..."}``."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from clustr_aio.domain.models import ErrorBody


def error_response(
    status: int, detail: str, *, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(ErrorBody(detail=detail), status=status, headers=headers)
