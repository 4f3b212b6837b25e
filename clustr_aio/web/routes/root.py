"""``GET /``: the liveness greeting the original FastAPI service answered."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from clustr_aio.web.openapi import operation
from clustr_aio.web.openapi.schemas import json_response, ref

if TYPE_CHECKING:
    from clustr_aio.domain.models import Greeting  # types only: it imports pydantic

routes = web.RouteTableDef()


@routes.get("/")
@operation(
    summary="Greeting",
    description="Answers as long as the server is up; the original service's `GET /`.",
    tags=("service",),
    responses={200: json_response("The server is up.", ref("Greeting"))},
)
async def hello(request: web.Request) -> web.Response:
    greeting: Greeting = {"message": "Hello World"}
    # Not web/responses.py's json_answer: this greeting keeps json.dumps's bytes, spaces
    # included, as it always had (clients and tests compare them, as a liveness check).
    return web.json_response(greeting)
