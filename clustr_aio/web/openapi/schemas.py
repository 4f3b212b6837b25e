"""Shared pieces of the OpenAPI document: component schemas and response builders.

The component schemas are derived from the API's models (:mod:`clustr_aio.domain.models`), the
bodies the handlers really build, so the document cannot drift from them.

Handlers compose their operations from these, so every ``{"detail": ...}`` error, every file
response and every JSON body is described the same way everywhere.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Final

from clustr_aio.web.openapi.registry import JSONObject

JSON: Final = "application/json"


_REF_TEMPLATE: Final = "#/components/schemas/{model}"


def ref(schema: str) -> JSONObject:
    return {"$ref": _REF_TEMPLATE.format(model=schema)}


API_MODELS: Final = (
    "ErrorBody",
    "UploadError",
    "Greeting",
    "UploadResponse",
    "UploadResults",
    "FileItem",
    "FileList",
    "DeleteRequest",
    "DeleteResponse",
    "CheckRequest",
    "CheckResponse",
    "KeyRequest",
    "KeyCreated",
    "KeyList",
)
"""The JSON bodies (of :mod:`clustr_aio.domain.models`) whose schemas are components of the
document, with those they contain."""

UPLOAD_FORM: Final[JSONObject] = {
    "type": "object",
    "required": ["files"],
    "properties": {
        "files": {
            "type": "array",
            "minItems": 1,
            "description": "One part per file, every part named `files`; parts with "
            "other names are read past.",
            # format: binary is what Swagger UI turns into a file chooser per item.
            "items": {"type": "string", "format": "binary"},
        }
    },
    # Fields with other names are read past. No name may hold a NUL: a part header that
    # does is malformed multipart (400).
    "propertyNames": {"pattern": "^[^\\x00]*$"},
}
"""The multipart form of ``POST /api/upload``: a request body read part by part, never a
model the server builds."""


@functools.cache
def component_schemas() -> JSONObject:
    """``components.schemas``: derived from :data:`API_MODELS` (made once, on first use).

    pydantic and the models are imported here, on the first ``/openapi.json``: a process that
    is never asked for the document never loads them (see :mod:`clustr_aio.web.bodies`).
    """
    from pydantic import TypeAdapter

    from clustr_aio.domain import models

    components: JSONObject = {"UploadForm": UPLOAD_FORM}
    for name in API_MODELS:
        adapter: TypeAdapter[object] = TypeAdapter(getattr(models, name))
        schema = adapter.json_schema(mode="serialization", ref_template=_REF_TEMPLATE)
        components.update(schema.pop("$defs", {}))
        components[schema["title"]] = schema
    return components


REQUEST_ID_RESPONSE_HEADER: Final[JSONObject] = {
    "description": "The request's id, as in the server log: the client's own `X-Request-ID` "
    "if it sent a sane one (1-64 of `A-Z a-z 0-9 . _ -`), else a new one.",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
}
"""The middleware in :mod:`clustr_aio.web.middlewares` sets it on every response."""


def json_response(
    description: str, schema: JSONObject, *, example: object | None = None
) -> JSONObject:
    media: JSONObject = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"description": description, "content": {JSON: media}}


def error_response(description: str, *examples: str, schema: str = "Error") -> JSONObject:
    """A ``{"detail": ...}`` response; each example is a ``detail`` this status really sends."""
    media: JSONObject = {"schema": ref(schema)}
    if len(examples) == 1:
        media["example"] = {"detail": examples[0]}
    elif examples:
        media["examples"] = {
            f"example{n}": {"summary": detail, "value": {"detail": detail}}
            for n, detail in enumerate(examples, start=1)
        }
    return {"description": description, "content": {JSON: media}}


def file_responses(
    media_types: Iterable[str], *, what: str, not_found: str
) -> Mapping[int, JSONObject]:
    """What aiohttp's ``FileResponse`` answers for a GET (static files and docs assets alike):
    validators, conditional requests and single byte ranges."""
    binary: JSONObject = {media_type: {} for media_type in media_types}
    validators: JSONObject = {
        "ETag": {"description": "Changes when the file does.", "schema": {"type": "string"}},
        "Last-Modified": {"schema": {"type": "string"}},
    }
    return {
        200: {
            "description": f"The {what}. Content-Type follows the file name's extension.",
            "headers": {
                **validators,
                "Accept-Ranges": {"schema": {"type": "string", "const": "bytes"}},
            },
            "content": binary,
        },
        206: {
            "description": "The byte range asked for with `Range` (one range only).",
            "headers": {
                **validators,
                "Content-Range": {
                    "required": True,
                    "schema": {"type": "string", "examples": ["bytes 0-1023/482113"]},
                },
            },
            "content": binary,
        },
        304: {
            "description": "Not modified: `If-None-Match` or `If-Modified-Since` matched. No body.",
            "headers": validators,
        },
        404: error_response(not_found, "Not Found"),
        412: error_response("`If-Match` or `If-Unmodified-Since` failed.", "Precondition Failed"),
        416: {
            **error_response(
                "The `Range` cannot be satisfied (starts past the end, or malformed).",
                "Range Not Satisfiable",
            ),
            "headers": {
                "Content-Range": {
                    "description": "`bytes */<file size>`",
                    "schema": {"type": "string", "examples": ["bytes */482113"]},
                }
            },
        },
    }


def _header(name: str, description: str, example: str) -> JSONObject:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": {"type": "string"},
        "example": example,
    }


FILE_REQUEST_HEADERS: Final[tuple[JSONObject, ...]] = (
    _header("Range", "One byte range: `bytes=0-1023`, `bytes=1024-`, `bytes=-500`.", "bytes=0-1"),
    _header(
        "If-None-Match",
        "An ETag from an earlier response: 304 if it still matches.",
        '"18a7f3c2b-75b41"',
    ),
    _header(
        "If-Modified-Since",
        "An HTTP date: 304 if the file has not changed since.",
        "Wed, 21 Oct 2015 07:28:00 GMT",
    ),
    _header(
        "If-Range",
        "Apply `Range` only if the file has not changed since this HTTP date.",
        "Wed, 21 Oct 2015 07:28:00 GMT",
    ),
    _header("If-Match", "412 unless the file's ETag matches.", "*"),
    _header(
        "If-Unmodified-Since",
        "412 if the file has changed since this HTTP date.",
        "Wed, 21 Oct 2015 07:28:00 GMT",
    ),
)
"""The request headers :func:`file_responses` reacts to."""
