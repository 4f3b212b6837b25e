"""Where each route's OpenAPI operation is declared: next to its handler.

A handler module documents its routes with the :func:`operation` decorator, in the same place
it adds them to its ``RouteTableDef``::

    @routes.get("/")
    @operation(summary="Greeting", tags=("service",), responses={200: json_response(...)})
    async def hello(request: web.Request) -> web.Response: ...

The operation is kept on the handler function itself, not in a registry filled as modules are
imported. :mod:`.spec` walks the app's route table and asks :func:`operation_for` about every
route; a route nobody documented is left out of the document, and
``tests/http/test_openapi.py`` fails until it is documented.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

JSONObject = dict[str, Any]
"""A fragment of the OpenAPI document, written as the JSON it becomes."""

Handler = TypeVar("Handler", bound=Callable[..., Any])


@dataclass(frozen=True, kw_only=True, slots=True)
class Operation:
    """One OpenAPI Operation Object, minus what the route table already says (path, method)."""

    summary: str
    description: str = ""
    tags: tuple[str, ...] = ()
    operation_id: str | None = None
    """Defaults to the handler's name."""
    parameters: tuple[JSONObject, ...] = ()
    request_body: JSONObject | None = None
    responses: Mapping[int, JSONObject] = field(default_factory=dict)

    def to_openapi(self, default_id: str) -> JSONObject:
        """The Operation Object; response keys become the strings OpenAPI wants."""
        document: JSONObject = {"operationId": self.operation_id or default_id}
        document["summary"] = self.summary
        if self.description:
            document["description"] = self.description
        if self.tags:
            document["tags"] = list(self.tags)
        if self.parameters:
            document["parameters"] = list(self.parameters)
        if self.request_body is not None:
            document["requestBody"] = self.request_body
        document["responses"] = {
            str(status): body for status, body in sorted(self.responses.items())
        }
        return document


_ATTRIBUTE = "__openapi_operation__"


def operation(
    *,
    summary: str,
    responses: Mapping[int, JSONObject],
    description: str = "",
    tags: tuple[str, ...] = (),
    operation_id: str | None = None,
    parameters: tuple[JSONObject, ...] = (),
    request_body: JSONObject | None = None,
) -> Callable[[Handler], Handler]:
    """Decorate a handler with its documentation; the handler itself is returned unchanged.

    Every method routed to this handler gets the same operation.
    """
    documented = Operation(
        summary=summary,
        description=description,
        tags=tags,
        operation_id=operation_id,
        parameters=parameters,
        request_body=request_body,
        responses=responses,
    )

    def document(handler: Handler) -> Handler:
        setattr(handler, _ATTRIBUTE, documented)
        return handler

    return document


def operation_for(route: web.AbstractRoute) -> Operation | None:
    """The documentation of ``route``, or ``None`` if nobody wrote any."""
    found = getattr(route.handler, _ATTRIBUTE, None)
    return found if isinstance(found, Operation) else None
