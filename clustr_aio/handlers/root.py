"""``GET /``: the liveness greeting the original FastAPI service answered."""

from __future__ import annotations

from aiohttp import web

routes = web.RouteTableDef()


@routes.get("/")
async def hello(request: web.Request) -> web.Response:
    return web.json_response({"message": "Hello World"})
