"""``/api/keys`` (AUTH=keys, admin scope): the API keys, as ``clustr-aio keys`` manages them —
list (never a key), create (the key shown once), revoke (refused by every worker from its next
request)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Final

from aiohttp import web

from clustr_aio.auth.keys import create_key, parse_duration, parse_key_name
from clustr_aio.auth.scopes import SCOPES
from clustr_aio.catalog.base import KeyRecord
from clustr_aio.domain.errors import BadRequest, NotFound
from clustr_aio.settings import parse_size
from clustr_aio.web.guard import requires
from clustr_aio.web.keys import CATALOG
from clustr_aio.web.openapi import operation
from clustr_aio.web.openapi.schemas import JSON, error_response, json_response, ref
from clustr_aio.web.responses import json_answer
from clustr_aio.web.routes.upload import rfc3339

__all__ = ["key_item", "routes"]

if TYPE_CHECKING:  # types only: the models module imports pydantic (see web/bodies.py)
    from clustr_aio.domain.models import KeyCreated, KeyItem, KeyList

routes = web.RouteTableDef()

_NAME_PARAMETER: Final = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "The key's name.",
    "schema": {"type": "string"},
    "example": "phone",
}


def _moment(value: datetime | None) -> str | None:
    return None if value is None else rfc3339(value)


def key_item(record: KeyRecord) -> KeyItem:
    return {
        "name": record.name,
        "scopes": [scope for scope in SCOPES if scope in record.scopes],
        "owner": record.owner,
        "created_at": rfc3339(record.created_at),
        "last_used_at": _moment(record.last_used_at),
        "expires_at": _moment(record.expires_at),
        "quota": record.quota,
    }


@routes.get("/api/keys")
@requires("admin")
@operation(
    summary="List API keys",
    description="Every key's name, scopes, owner, times and quota; never a key itself.",
    tags=("keys",),
    responses={200: json_response("The keys, by name.", ref("KeyList"))},
)
async def list_keys(request: web.Request) -> web.Response:
    records = await request.app[CATALOG].keys()
    answer: KeyList = {"data": [key_item(record) for record in records]}
    return json_answer(answer)


@routes.post("/api/keys")
@requires("admin")
@operation(
    summary="Create an API key",
    description="The answer is the only time the key is shown: only its hash is stored.",
    tags=("keys",),
    request_body={"required": True, "content": {JSON: {"schema": ref("KeyRequest")}}},
    responses={
        201: json_response("The key, made.", ref("KeyCreated")),
        400: error_response("The body is not what this takes.", "scopes: unknown scope 'all'"),
        409: error_response("The name is taken.", "an API key named 'phone' exists already"),
    },
)
async def create(request: web.Request) -> web.Response:
    from clustr_aio.web import bodies  # pydantic, on the first JSON body

    body = await bodies.json_body(request, bodies.KEY_REQUEST)
    try:
        expires = parse_duration(body["expires_in"]) if "expires_in" in body else None
        quota = body.get("quota")
        quota = parse_size(quota) if isinstance(quota, str) else quota
    except ValueError as error:
        raise BadRequest(str(error)) from None
    key, record = await create_key(
        request.app[CATALOG],
        body["name"],
        body["scopes"],
        owner=body.get("owner"),
        expires_in=expires,
        quota=quota,
    )
    created: KeyCreated = {**key_item(record), "key": key}
    return json_answer(created, status=201)


@routes.delete("/api/keys/{name}")
@requires("admin")
@operation(
    summary="Revoke an API key",
    description="Deleted at once: every worker refuses it from its next request on.",
    tags=("keys",),
    operation_id="revoke_key",
    parameters=(_NAME_PARAMETER,),
    responses={
        204: {"description": "Revoked."},
        404: error_response("No key has this name.", "no API key is named 'phone'"),
    },
)
async def revoke(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not await request.app[CATALOG].revoke_key(parse_key_name(name)):
        raise NotFound(f"no API key is named {name!r}")
    return web.Response(status=204)
