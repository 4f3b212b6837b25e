"""``/api/files``: the catalog of stored files — list, get, delete, and check by sha256."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from clustr_aio.auth.keys import parse_key_name
from clustr_aio.catalog.base import Catalog, FileRecord, Order
from clustr_aio.catalog.ids import is_id
from clustr_aio.domain.errors import BadRequest, Forbidden, NotFound
from clustr_aio.domain.patterns import ID_PATTERN
from clustr_aio.domain.sniff import STORED_CONTENT_TYPES
from clustr_aio.storage.base import Deleting
from clustr_aio.web.guard import requires
from clustr_aio.web.keys import CATALOG, STORAGE, THUMBNAILER
from clustr_aio.web.middlewares import admitted
from clustr_aio.web.openapi import operation
from clustr_aio.web.openapi.registry import JSONObject
from clustr_aio.web.openapi.schemas import JSON, error_response, json_response, ref
from clustr_aio.web.responses import json_answer
from clustr_aio.web.routes.upload import file_item, item_urls

if TYPE_CHECKING:  # types only: the models module imports pydantic (see web/bodies.py)
    from clustr_aio.domain.models import DeleteResponse, FileList

routes = web.RouteTableDef()

DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
_ORDERS: Final[dict[str, Order]] = {"newest": "newest", "oldest": "oldest"}
ID_SEGMENT: Final = "[0-9a-f-]{36}"
"""What the id routes match, so that ``GET /api/files/check`` is a 405 (that path is POST's),
not a lookup of the id "check"; the id itself is checked in the handler (404)."""

ID_PARAMETER: Final[JSONObject] = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "The file's `id`, from its upload or a listing.",
    "schema": {"type": "string", "pattern": ID_PATTERN},
    "example": "019ad8c4-6f3a-7c21-9e4b-3f5d2a1b0c9e",
}
_NOT_FOUND: Final = error_response("No stored file has this id.", "no stored file has id '…'")


def _bad_request(*examples: str) -> JSONObject:
    return error_response("A parameter or the body is not what this operation takes.", *examples)


# -- cursors ---------------------------------------------------------------------------------


def encode_cursor(order: Order, last_id: str) -> str:
    """Opaque to clients: the order's initial and the last id seen, base64url."""
    return base64.urlsafe_b64encode(f"{order[0]}{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str, order: Order) -> str:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadRequest("cursor: not a cursor this server gave out") from None
    if not text or not is_id(text[1:]) or text[0] not in "no":
        raise BadRequest("cursor: not a cursor this server gave out")
    if text[0] != order[0]:
        raise BadRequest(f"cursor: it belongs to another order than {order!r}")
    return text[1:]


def _limit(request: web.Request) -> int:
    text = request.query.get("limit")
    if text is None:
        return DEFAULT_LIMIT
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise BadRequest(f"limit: expected an integer from 1 to {MAX_LIMIT}, got {text!r}")
    return int(text)


def _order(request: web.Request) -> Order:
    text = request.query.get("order", "newest")
    order = _ORDERS.get(text)
    if order is None:
        raise BadRequest(f"order: expected newest or oldest, got {text!r}")
    return order


async def visible_owner(request: web.Request) -> str | None:
    """Whose files this request may see: its key's owner's; every owner's for an admin key (or
    in the open mode), or the one named by ``?owner=``. Another owner's file is then not
    found (404), as if it did not exist."""
    principal = await admitted(request)
    named = request.query.get("owner")
    if named is None:
        return principal.sees
    parse_key_name(named, "owner")
    if principal.sees is not None and named != principal.sees:
        raise Forbidden("owner: only an admin key may name another owner")
    return named


def _content_type(request: web.Request) -> str | None:
    text = request.query.get("content_type")
    if text is not None and text not in STORED_CONTENT_TYPES:
        raise BadRequest(f"content_type: expected one of {', '.join(STORED_CONTENT_TYPES)}")
    return text


def _json_request(schema: str, example: Any) -> JSONObject:
    return {"required": True, "content": {JSON: {"schema": ref(schema), "example": example}}}


# -- routes ----------------------------------------------------------------------------------


@routes.get("/api/files")
@requires("read")
@operation(
    summary="List stored files",
    description="A page of the stored files, newest first (or oldest first), optionally of "
    "one content type. Pass `next_cursor` back as `cursor` for the next page: pages are keyset "
    "pages, so files stored or deleted meanwhile never make a page repeat or skip the others.",
    tags=("files",),
    parameters=(
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "description": f"Files per page, 1-{MAX_LIMIT}.",
            "schema": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_LIMIT,
                "default": DEFAULT_LIMIT,
            },
        },
        {
            "name": "cursor",
            "in": "query",
            "required": False,
            "description": "`next_cursor` of the previous page, with the same `order`.",
            "schema": {"type": "string"},
        },
        {
            "name": "order",
            "in": "query",
            "required": False,
            "schema": {"type": "string", "enum": list(_ORDERS), "default": "newest"},
        },
        {
            "name": "content_type",
            "in": "query",
            "required": False,
            "description": "Only files of this detected type.",
            "schema": {"type": "string", "enum": list(STORED_CONTENT_TYPES)},
        },
        {
            "name": "owner",
            "in": "query",
            "required": False,
            "description": "Only this owner's files (AUTH=keys: an admin key may name any "
            "owner; another key only its own).",
            "schema": {"type": "string"},
        },
    ),
    responses={
        200: json_response("A page of files.", ref("FileList")),
        400: _bad_request(
            "limit: expected an integer from 1 to 1000, got '0'",
            "cursor: not a cursor this server gave out",
        ),
    },
)
async def list_files(request: web.Request) -> web.Response:
    limit, order = _limit(request), _order(request)
    cursor = request.query.get("cursor")
    after = decode_cursor(cursor, order) if cursor is not None else None
    records = await request.app[CATALOG].page(
        limit=limit + 1,
        after=after,
        order=order,
        content_type=_content_type(request),
        owner=await visible_owner(request),
    )
    more = len(records) > limit
    records = records[:limit]
    urls = item_urls(request)
    page: FileList = {
        "data": [file_item(urls, record) for record in records],
        "next_cursor": encode_cursor(order, records[-1].id) if more else None,
    }
    return json_answer(page)


@routes.get(f"/api/files/{{id:{ID_SEGMENT}}}")
@requires("read")
@operation(
    summary="A stored file's details",
    tags=("files",),
    operation_id="get_file",
    parameters=(ID_PARAMETER,),
    responses={200: json_response("The file.", ref("FileItem")), 404: _NOT_FOUND},
)
async def get_file(request: web.Request) -> web.Response:
    record = await requested_record(request)
    return json_answer(file_item(item_urls(request), record))


async def requested_record(request: web.Request) -> FileRecord:
    """The record of the route's ``{id}``, if this request may see it (its key's owner's, or
    any for an admin): a 404 when there is none, or it is another owner's."""
    record_id = request.match_info["id"]
    owner = await visible_owner(request)
    record = await request.app[CATALOG].get(record_id, owner=owner) if is_id(record_id) else None
    if record is None:
        raise NotFound(f"no stored file has id {record_id!r}")
    return record


@routes.delete(f"/api/files/{{id:{ID_SEGMENT}}}")
@requires("delete")
@operation(
    summary="Delete a stored file",
    description="Removes the file from the storage (`/uploads` answers 404 for it from now on), "
    "its thumbnails, and its record.",
    tags=("files",),
    operation_id="delete_file",
    parameters=(ID_PARAMETER,),
    responses={204: {"description": "Deleted."}, 404: _NOT_FOUND},
)
async def delete_file(request: web.Request) -> web.Response:
    record_id = request.match_info["id"]
    deleted = await _delete(request, [record_id] if is_id(record_id) else [])
    if not deleted:
        raise NotFound(f"no stored file has id {record_id!r}")
    return web.Response(status=204)


@routes.post("/api/files/delete")
@requires("delete")
@operation(
    summary="Delete stored files",
    description="Up to 1000 at once; each as `DELETE /api/files/{id}` does.",
    tags=("files",),
    operation_id="delete_files",
    request_body=_json_request("DeleteRequest", {"ids": ["019ad8c4-6f3a-7c21-9e4b-3f5d2a1b0c9e"]}),
    responses={
        200: json_response("What was deleted, and which ids no file has.", ref("DeleteResponse")),
        400: _bad_request("ids: List should have at most 1000 items after validation, not 1001"),
    },
)
async def delete_files(request: web.Request) -> web.Response:
    from clustr_aio.web import bodies  # pydantic, on the first JSON body

    body = await bodies.json_body(request, bodies.DELETE_REQUEST)
    ids = list(dict.fromkeys(body["ids"]))
    deleted = set(await _delete(request, ids))
    answer: DeleteResponse = {
        "deleted": [i for i in ids if i in deleted],
        "missing": [i for i in ids if i not in deleted],
    }
    return json_answer(answer)


async def _delete(request: web.Request, record_ids: list[str]) -> list[str]:
    """Unlink each file and its thumbnails, then remove its record: a failure between the two
    leaves a record whose file is gone, which the start-up reconciliation removes (the other
    order would leave a file without a record, which it would adopt again)."""
    catalog, storage = request.app[CATALOG], request.app[STORAGE]
    if not isinstance(storage, Deleting):
        raise web.HTTPMethodNotAllowed(request.method, [], text="this storage cannot delete")
    owner = await visible_owner(request)
    found = await catalog.get_many(record_ids, owner=owner)
    await storage.delete([record.stored_name for record in found])
    await request.app[THUMBNAILER].remove([record.id for record in found])
    deleted = await catalog.delete([record.id for record in found], owner=owner)
    return [record.id for record in deleted]


@routes.post("/api/files/check")
@requires("upload", "read")
@operation(
    summary="Which files are stored already",
    description="Up to 10,000 SHA-256 digests of files a client is about to send: for each, "
    "in request order, the id of a stored file with those bytes, or null. Send only the files "
    "answered null.",
    tags=("files",),
    operation_id="check_files",
    request_body=_json_request(
        "CheckRequest",
        {"sha256": ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]},
    ),
    responses={
        200: json_response("One result per digest, in request order.", ref("CheckResponse")),
        400: _bad_request("sha256.0: String should match pattern '^[0-9a-fA-F]{64}$'"),
    },
)
async def check_files(request: web.Request) -> web.Response:
    from clustr_aio.web import bodies  # pydantic, on the first JSON body

    digests = (await bodies.json_body(request, bodies.CHECK_REQUEST))["sha256"]
    # The owner the key uploads as, like DEDUPE: what an upload with this key would find.
    owner = (await admitted(request)).owner
    answer = await check_digests(request.app[CATALOG], digests, owner=owner)
    return web.Response(body=answer, content_type=JSON)


async def check_digests(catalog: Catalog, digests: Sequence[str], *, owner: str | None) -> bytes:
    """The encoded ``CheckResponse`` to ``digests`` (hex, as validated, as sent, in order):
    the handler's work past the body's validation (bench/catalog.py times it)."""
    lowered = _lowered(digests)
    return check_answer(digests, lowered, await catalog.ids_by_sha256(lowered, owner=owner))


def _lowered(digests: Sequence[str]) -> Sequence[str]:
    """The (hex) digests in lower case, as the catalog keeps them: ``digests`` themselves when
    they are already (as clients' mostly are), which a search of their join for each capital
    tells (0.1 ms for 10,000, where ``str.islower`` took 5 and lowering them all 1-2). The
    catalog's and the answer's lookups then hash the same strings, once."""
    joined = "".join(digests)
    if any(capital in joined for capital in "ABCDEF"):
        return [digest.lower() for digest in digests]
    return digests


_RESULT: Final = '{"sha256":"'
_NOT_STORED: Final = '","id":null},'


def check_answer(digests: Sequence[str], lowered: Sequence[str], ids: Mapping[str, str]) -> bytes:
    """The ``CheckResponse`` to ``digests`` (hex, as sent, in order), ``lowered`` being them
    in lower case and ``ids`` the catalog's answer (by lower-case digest), encoded.

    Written as one join of pieces, the digests' own strings among them: digests are hex and
    ids UUIDs, so nothing needs escaping. For 10,000 results, digests fresh from a parsed body
    as in a server, that took 4-6 ms of CPU where building 10,000 dicts for orjson took 15-24
    (in process, interleaved, loaded machine), a sixth of the check's budget."""
    pieces = ['{"results":[']
    for sent, digest in zip(digests, lowered, strict=True):
        record_id = ids.get(digest)
        pieces += (_RESULT, sent, _NOT_STORED if record_id is None else f'","id":"{record_id}"}},')
    if digests:  # the last result's comma cut from its piece, not from the joined megabyte
        pieces[-1] = pieces[-1][:-1]
    pieces.append("]}")
    return "".join(pieces).encode()


__all__ = [
    "ID_PARAMETER",
    "ID_SEGMENT",
    "check_answer",
    "check_digests",
    "decode_cursor",
    "encode_cursor",
    "requested_record",
    "routes",
    "visible_owner",
]
