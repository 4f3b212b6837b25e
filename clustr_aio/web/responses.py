"""The JSON error body every client sees, FastAPI-shaped: ``{"detail": "..."}``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from aiohttp import web

from clustr_aio.domain.errors import ClustrError

if TYPE_CHECKING:
    # Types only: the models module imports pydantic, which a process loads on its first JSON
    # body or /openapi.json (web/bodies.py), not at start-up.
    from clustr_aio.domain.models import ErrorBody, UploadError


def error_response(
    status: int, detail: str, *, headers: Mapping[str, str] | None = None
) -> web.Response:
    body: ErrorBody = {"detail": detail}
    return web.json_response(body, status=status, headers=headers)


def clustr_error_response(error: ClustrError) -> web.Response:
    """``{"detail"}`` (with the file and its index when the error is about one of an upload's),
    and ``Retry-After`` when the refusal is only for now."""
    headers = error.headers() or None
    if error.file is None or error.index is None:
        return error_response(error.status, error.detail, headers=headers)
    body: UploadError = {"detail": error.detail, "file": error.file, "index": error.index}
    return web.json_response(body, status=error.status, headers=headers)
