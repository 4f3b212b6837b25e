"""The OpenAPI 3.1 document, built from the app's route table.

Paths and methods come from the router, never from a hand-kept list: each route contributes the
operation its handler module declared (:mod:`.registry`), and a route with none
is missing from the document, which ``tests/http/test_openapi.py`` turns into a failure.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from aiohttp import web

import clustr_aio
from clustr_aio.compat import is_cors_preflight
from clustr_aio.settings import Settings
from clustr_aio.web.guard import Access, access_for
from clustr_aio.web.keys import SETTINGS
from clustr_aio.web.middlewares import REQUEST_ID_HEADER
from clustr_aio.web.openapi.registry import JSONObject, operation_for
from clustr_aio.web.openapi.schemas import (
    REQUEST_ID_RESPONSE_HEADER,
    component_schemas,
    error_response,
)

OPENAPI_VERSION: Final = "3.1.0"

TAGS: Final = (
    {"name": "upload", "description": "Send images; they are checked and stored all or nothing."},
    {"name": "files", "description": "Read the stored files back."},
    {"name": "keys", "description": "API keys (AUTH=keys, admin scope)."},
    {"name": "service", "description": "Liveness and the like."},
    {"name": "documentation", "description": "This document, and the pages that render it."},
)


@dataclass(frozen=True, order=True, slots=True)
class RouteKey:
    """A path template as OpenAPI writes it, and an upper-case method."""

    path: str
    method: str


def served_routes(router: web.UrlDispatcher) -> Iterator[tuple[RouteKey, web.AbstractRoute]]:
    """Every route that needs documenting.

    Left out: the ``OPTIONS`` routes aiohttp-cors adds to answer CORS preflights, and the
    ``HEAD`` aiohttp adds beside every ``GET`` (same answer, no body; RFC 9110 section 9.3.2).
    """
    for resource in router.resources():
        path = resource.canonical  # placeholders without their regex: "/a/{name}"
        methods = {route.method for route in resource}
        for route in resource:
            if route.method == "HEAD" and "GET" in methods:
                continue
            if route.method == "OPTIONS" and is_cors_preflight(route):
                continue
            yield RouteKey(path, route.method), route


def _default_operation_id(key: RouteKey, route: web.AbstractRoute) -> str:
    return str(getattr(route.handler, "__name__", f"{key.method.lower()}_{key.path}"))


def _with_request_id(response: JSONObject) -> JSONObject:
    """A copy of ``response`` that also lists the header the middleware sets on every response
    (a copy: the operation's own dicts are shared by every app and every request)."""
    reference = {"$ref": f"#/components/headers/{REQUEST_ID_HEADER}"}
    return {**response, "headers": {**response.get("headers", {}), REQUEST_ID_HEADER: reference}}


ENUM_SETTING: Final = "x-enum-setting"
"""In a parameter's schema: its values are those of this setting (a sequence), as configured."""


def _with_setting(parameter: JSONObject, settings: Settings) -> JSONObject:
    schema = parameter.get("schema", {})
    if ENUM_SETTING not in schema:
        return parameter
    values = list(getattr(settings, schema[ENUM_SETTING]))
    rest = {key: value for key, value in schema.items() if key != ENUM_SETTING}
    return {**parameter, "schema": {**rest, "enum": values, "default": values[0]}}


def build_openapi(app: web.Application, *, server_url: str | None = None) -> JSONObject:
    """The whole document for ``app`` as configured (limits in the description).

    ``server_url`` is where clients reach the API: for a served document, the base URL of
    that request's ``preview_url``s (PUBLIC_BASE_URL, else what a trusted proxy forwarded,
    else HOST:PORT); by default HOST:PORT or PUBLIC_BASE_URL."""
    settings = app[SETTINGS]
    paths: dict[str, JSONObject] = {}
    for key, route in sorted(served_routes(app.router), key=lambda pair: pair[0]):
        operation = operation_for(route)
        if operation is None:
            continue
        rendered = operation.to_openapi(_default_operation_id(key, route))
        access = access_for(route)
        if access is not None:
            _secure(rendered, access, settings)
        rendered["responses"] = {
            status: _with_request_id(response) for status, response in rendered["responses"].items()
        }
        rendered["parameters"] = [
            _with_setting(parameter, settings) for parameter in rendered.get("parameters", [])
        ]
        if not rendered["parameters"]:
            del rendered["parameters"]
        paths.setdefault(key.path, {})[key.method.lower()] = rendered
    components: JSONObject = {}
    if settings.auth == "keys":
        components["securitySchemes"] = SECURITY_SCHEMES
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "clustr_aio",
            "version": clustr_aio.__version__,
            "summary": "Streaming image-upload backend of Clustr.",
            "description": _description(settings),
        },
        "servers": [{"url": server_url or settings.base_url}],
        "tags": list(TAGS),
        "paths": paths,
        "components": {
            **components,
            "schemas": component_schemas(),
            "headers": {REQUEST_ID_HEADER: REQUEST_ID_RESPONSE_HEADER},
            "responses": {
                "NotFound": error_response("No route matches the path.", "Not Found"),
                "MethodNotAllowed": {
                    **error_response(
                        "The path exists but not for this method.", "Method Not Allowed"
                    ),
                    "headers": {
                        "Allow": {
                            "description": "The methods the path accepts.",
                            "schema": {"type": "string"},
                        }
                    },
                },
            },
        },
    }


SECURITY_SCHEMES: Final[JSONObject] = {
    "bearerKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (`clustr_…`) as `Authorization: Bearer <key>`.",
    },
    "headerKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "An API key (`clustr_…`) as `X-API-Key: <key>`.",
    },
}
"""AUTH=keys: the two ways a key may be sent; either is enough."""


def _secure(operation: JSONObject, access: Access, settings: Settings) -> None:
    """The operation's security requirement (AUTH=keys) and the refusals the guard answers."""
    scopes = list(access.scopes)
    responses = operation["responses"]
    if settings.auth == "keys":
        # Alternatives, any one of which will do: each scheme with each scope (for schemes other
        # than OAuth the list names roles, and a list of two would mean both).
        operation["security"] = [
            {scheme: [scope]} for scheme in SECURITY_SCHEMES for scope in scopes
        ]
        needed = " or ".join(f"`{scope}`" for scope in scopes)
        operation["description"] = (
            operation.get("description", "") + f"\n\nNeeds an API key with the scope {needed} "
            "(`admin` has every scope)."
        ).strip()
        responses["401"] = error_response(
            "No API key, or one that is unknown, revoked or expired (`WWW-Authenticate: Bearer`).",
            "this API key is not valid (unknown or revoked)",
        )
        responses["403"] = responses.get("403") or error_response(
            "The key lacks the scope this needs.",
            f"API key 'phone' lacks the scope this needs: {' or '.join(scopes)}",
        )
    if settings.rate_limit_requests is not None or settings.rate_limit_upload_bytes is not None:
        responses["429"] = {
            **error_response(
                "A rate limit was reached: retry after `Retry-After` seconds. Every answer of "
                "this operation carries `RateLimit-Policy` and `RateLimit`.",
                "rate limit of 600 requests per 60 s reached; retry after 1 s",
            ),
            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        }
    operation["responses"] = dict(sorted(responses.items()))


def _description(settings: Settings) -> str:
    extensions = ", ".join(sorted(settings.allowed_extensions))
    return f"""\
Accepts image uploads (`POST /api/upload`, one to thousands of files per request), streams every
part to disk as it arrives, checks each file's bytes, stores the batch **all or nothing** and
serves the stored files under `{settings.upload_url_path}`.

**Limits on this server**

| Limit | Value |
|---|---|
| Accepted extensions | {extensions} |
| Largest file (`MAX_FILE_SIZE`) | {_size(settings.max_file_size)} |
| Largest request body (`MAX_REQUEST_SIZE`) | {_size(settings.max_request_size)} |
| Most files per request (`MAX_FILES`) | {settings.max_files} |

**Errors** are always JSON, `{{"detail": "<what went wrong>"}}`, whatever the status: besides
the statuses listed for each operation, any path answers 404 when no route matches it, and 405
(with an `Allow` header) when the path exists but not for that method.

Every response carries `{REQUEST_ID_HEADER}`, the id the server logs the request under; send
your own (1-64 of `A-Z a-z 0-9 . _ -`) to follow a request through the logs.
"""


def _size(count: int) -> str:
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= factor and count % factor == 0:
            return f"{count // factor} {unit} ({count} bytes)"
    return f"{count} bytes"
