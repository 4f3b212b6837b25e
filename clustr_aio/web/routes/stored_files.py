"""``GET /uploads/{filename}``: the stored files. aiohttp's static route serves them (added in
:mod:`clustr_aio.web.app` under this module's :data:`ROUTE_NAME`); this module documents it."""

from __future__ import annotations

from typing import Final

from clustr_aio.web.openapi import Operation, document_static
from clustr_aio.web.openapi.schemas import (
    FILE_REQUEST_HEADERS,
    STORED_CONTENT_TYPES,
    error_response,
    file_responses,
)

ROUTE_NAME: Final = "uploads"

document_static(
    ROUTE_NAME,
    get=Operation(
        summary="Download a stored file",
        description="The bytes of a file stored by `POST /api/upload`, at the `preview_url` its "
        "upload answered. Supports `ETag`/`If-None-Match`, `Last-Modified`/`If-Modified-Since` "
        "(304) and a single `Range` (206, or the whole file when `If-Range` names another "
        "version); `HEAD` answers the same headers without the body. Only regular files "
        "directly in the upload folder are served: names that start with a dot, anything in a "
        "sub-folder and symbolic links are a 404.",
        tags=("files",),
        operation_id="get_stored_file",
        parameters=(
            {
                "name": "filename",
                "in": "path",
                "required": True,
                "description": "`stored_filename` from the upload's answer.",
                "schema": {"type": "string"},
                "example": "beach.jpg",
            },
            *FILE_REQUEST_HEADERS,
        ),
        responses={
            **file_responses(
                STORED_CONTENT_TYPES, what="file", not_found="No stored file of that name."
            ),
            403: error_response("The name is a directory, or not readable.", "Forbidden"),
        },
    ),
)
