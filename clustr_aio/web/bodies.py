"""JSON request bodies (``POST /api/files/delete``, ``/api/files/check``, ``/api/keys``),
validated by pydantic against their models in :mod:`clustr_aio.domain.models`.

Handlers import this module on their first body, not at start-up: pydantic and the models'
validators are some 8 MiB of every process, and most processes never see a JSON body (an
upload is multipart, a stored file a GET). After the first, the import is a dictionary lookup.
"""

from __future__ import annotations

from typing import Final, TypeVar

from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from clustr_aio.domain.errors import BadRequest
from clustr_aio.domain.models import CheckRequest, DeleteRequest, KeyRequest

__all__ = ["CHECK_REQUEST", "DELETE_REQUEST", "KEY_REQUEST", "json_body", "validated"]

_T = TypeVar("_T")

_JSON: Final = "application/json"

DELETE_REQUEST: Final = TypeAdapter(DeleteRequest)
CHECK_REQUEST: Final = TypeAdapter(CheckRequest)
KEY_REQUEST: Final = TypeAdapter(KeyRequest)


async def json_body(request: web.Request, adapter: TypeAdapter[_T]) -> _T:
    """The request's body, as ``adapter`` validates it.

    Raises:
        BadRequest: the body is not ``application/json``, or not what the model says (the
            first problem, where it is, in pydantic's words).
    """
    if request.content_type != _JSON:
        raise BadRequest("the body must be application/json")
    return validated(await request.read(), adapter)


def validated(raw: bytes, adapter: TypeAdapter[_T]) -> _T:
    """``raw`` as ``adapter`` validates it (:func:`json_body`'s work past reading the request;
    bench/catalog.py times it as part of a check).

    Raises:
        BadRequest: as :func:`json_body`.
    """
    try:
        return adapter.validate_json(raw)
    except ValidationError as error:
        problem = error.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in problem["loc"]) or "body"
        raise BadRequest(f"{where}: {problem['msg']}") from None
