"""Cross-cutting request handling: request ids, JSON errors, security headers.

This is the one place where library and domain errors become HTTP responses.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Awaitable, Callable

from aiohttp import web

from clustr_aio.auth.keys import OPEN, Principal
from clustr_aio.auth.signing import SIGNATURE
from clustr_aio.domain.errors import ClientDisconnected, ClustrError
from clustr_aio.observability.logs import bind_request_id, unbind_request_id
from clustr_aio.web.base_url import client_address
from clustr_aio.web.guard import RateState, access_for, rate_limit_header
from clustr_aio.web.keys import GUARD, PRINCIPAL, RATE_STATE, REQUEST_ID, SETTINGS
from clustr_aio.web.links import refuse_unsigned
from clustr_aio.web.responses import clustr_error_response, error_response

log = logging.getLogger("clustr_aio")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID_HEADER = "X-Request-ID"
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Headers of an HTTPException worth keeping on the JSON version (Allow on a 405, for one).
_KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate", "Location")


def new_request_id() -> str:
    """64 random bits as 16 hex digits. Ids tell requests apart in the logs and guard nothing,
    so the random module's generator makes them, without a getrandom syscall per request (as
    uuid4 made). It is reseeded in every forked worker, unlike a Random instance of our own."""
    return f"{random.getrandbits(64):016x}"


def ensure_request_id(request: web.BaseRequest) -> str:
    """The request's id, assigned on first use: the client's X-Request-ID if it is sane."""
    rid = request.get(REQUEST_ID)
    if rid is None:
        rid = request[REQUEST_ID] = request_id_for(request.headers.get(REQUEST_ID_HEADER))
    return rid


def request_id_for(offered: str | None) -> str:
    """The client's X-Request-ID if it is sane, else a new one."""
    return offered if offered and _CLIENT_REQUEST_ID.fullmatch(offered) else new_request_id()


@web.middleware
async def request_id(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tag the request with an id for the logs: every record logged while it runs carries it."""
    token = bind_request_id(ensure_request_id(request))
    try:
        return await handler(request)
    finally:
        unbind_request_id(token)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into ``{"detail": ...}`` with the right status; no traceback leaks."""
    try:
        return await handler(request)
    except ClustrError as error:
        return clustr_error_response(error)
    except ClientDisconnected:
        log.info("client disconnected mid-upload; nothing of it was kept")
        return error_response(400, "client disconnected before the upload was complete")
    except web.HTTPException as error:
        if error.status < 400:
            raise
        kept = {k: v for k in _KEPT_HEADERS if (v := error.headers.get(k)) is not None}
        # aiohttp's default text is "404: Not Found"; FastAPI's detail is just "Not Found".
        text = error.text or ""
        detail = error.reason if text in ("", f"{error.status}: {error.reason}") else text
        return error_response(error.status, detail, headers=kept)
    except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "Internal Server Error")


def common_headers(request: web.Request, response: web.StreamResponse) -> None:
    """From on_response_prepare: on every response, static files, errors and the refusals that
    aiohttp sends before any middleware runs (``Expect: 100-continue``) included."""
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers[REQUEST_ID_HEADER] = ensure_request_id(request)


async def admitted(request: web.Request) -> Principal:
    """Who the request is from, admitted by the app's guard (once per request: the upload's
    expect handler asks before any middleware runs, then the middleware asks again)."""
    if PRINCIPAL in request:
        return request[PRINCIPAL]
    access = access_for(request.match_info.route)
    if access is None:
        return OPEN
    if access.signed_urls and _signed_instead(request):
        refusal = refuse_unsigned(request)
        if refusal is not None:
            raise refusal
        request[PRINCIPAL] = OPEN  # the API handed this URL out to someone who may see it
        return OPEN
    state = request[RATE_STATE] = RateState()
    principal = await request.app[GUARD].admit(
        access, request.headers, client_address(request), state
    )
    request[PRINCIPAL] = principal
    return principal


def _signed_instead(request: web.Request) -> bool:
    """Whether a signed URL, not a key, is what admits this request: PUBLIC_FILES=false, and a
    signature sent (or no keys to send: AUTH=off)."""
    if request.app[SETTINGS].public_files:
        return False
    return SIGNATURE in request.query or not request.app[GUARD].keys_required


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Routes that declare scopes (``@requires``) need a key with one (AUTH=keys), and are
    rate limited; refusals are ClustrErrors, which :func:`json_errors` answers."""
    await admitted(request)
    return await handler(request)


async def rate_limit_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: ``RateLimit-Policy`` and ``RateLimit`` on every answer of a limited
    route, the 429s included."""
    state = request.get(RATE_STATE)
    if state is None or not state.decisions:
        return
    policies = request.app[GUARD].policies([name for name, _ in state.decisions])
    response.headers["RateLimit-Policy"] = policies
    response.headers["RateLimit"] = rate_limit_header(state)
