"""API documentation: the OpenAPI 3.1 document built from the route table, and the Swagger UI
(``/docs``) and ReDoc (``/redoc``) pages that render it from assets this app serves itself.

Handler modules document their routes with :func:`operation`,
composing the shared pieces in :mod:`clustr_aio.web.openapi.schemas`.
"""

from clustr_aio.web.openapi.registry import JSONObject, Operation, operation
from clustr_aio.web.openapi.spec import build_openapi, served_routes

__all__ = [
    "JSONObject",
    "Operation",
    "build_openapi",
    "operation",
    "served_routes",
]
