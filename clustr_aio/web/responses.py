"""The JSON error body every client sees, FastAPI-shaped: ``{"detail": "..."}``."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from clustr_aio.domain.errors import ClustrError
from clustr_aio.domain.models import ErrorBody


def error_response(
    status: int, detail: str, *, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(ErrorBody(detail=detail), status=status, headers=headers)


def clustr_error_response(error: ClustrError) -> web.Response:
    """The response for a domain error, with its ``Retry-After`` if it has one."""
    retry = {"Retry-After": str(error.retry_after)} if error.retry_after else None
    return error_response(error.status, error.detail, headers=retry)
