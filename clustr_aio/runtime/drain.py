"""Graceful stop: stop accepting, let the uploads in flight finish, then close.

aiohttp's own shutdown (``AppRunner.cleanup``) is not enough for an upload server: it first
marks every connection closing, and a closing connection discards the bytes that still arrive,
so an upload whose body is on its way can never finish. :class:`DrainingRunner` drains first:

1. close the listening sockets: new connections are refused (or, with socket activation, wait
   in systemd's socket for the next process);
2. close idle keep-alive connections, now and whenever one becomes idle (a connection that has
   not sent its first request yet gets a moment: its request is likely on its way);
3. let every request in flight go on reading its body; its response (and that of a request that
   arrives meanwhile on a kept-alive connection) carries ``Connection: close``;
4. after ``timeout`` seconds, cancel the requests still running: the upload pipeline discards
   their temporary files and the client gets a 503 (or, if it is mid-body, possibly only the
   closed connection);
5. only then run aiohttp's cleanup, which has nothing left to cut short.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

from aiohttp import hdrs, web

from clustr_aio.compat import connection_is_idle, site_server
from clustr_aio.runtime.protocol import ConnectionGuard, GuardedServer, guard_server
from clustr_aio.web.keys import QUICK_RESPONDER
from clustr_aio.web.responses import error_response

__all__ = ["DrainingRunner", "RequestTracker"]

log = logging.getLogger("clustr_aio")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_POLL_SECONDS: Final = 0.05
_FIRST_REQUEST_GRACE_SECONDS: Final = 1.0
"""How long a drain waits for the first request of a connection accepted just before it."""
_ABORT_GRACE_SECONDS: Final = 5.0
"""How long cancelled requests get to discard their files and answer 503."""
_CLOSE_TIMEOUT_SECONDS: Final = 2.0
"""aiohttp's own shutdown, after the drain: only stragglers (half-sent headers) are left."""


class RequestTracker:
    """Knows the requests in flight, marks responses ``Connection: close`` once draining, and
    turns the drain's cancellation of a request into a 503."""

    def __init__(self) -> None:
        self.draining = False
        # The transports of connections that have carried a request (RequestHandler itself
        # cannot be weakly referenced; its transport lives exactly as long as the connection).
        self.used: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._aborted: set[asyncio.Task[Any]] = set()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def install(self, app: web.Application) -> None:
        # Outermost, so that it sees every request and the 503 it makes is the final answer.
        app.middlewares.insert(0, self.middleware)
        app.on_response_prepare.append(self._on_response_prepare)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        if request.transport is not None:
            self.used.add(request.transport)
        try:
            return await handler(request)
        except asyncio.CancelledError:
            if task not in self._aborted:
                raise
            task.uncancel()  # this cancellation was ours and ends here, with an answer
            response = error_response(503, "the server is shutting down; retry the upload")
            response.force_close()
            return response
        finally:
            self._in_flight.discard(task)
            self._aborted.discard(task)

    async def _on_response_prepare(self, _: web.Request, response: web.StreamResponse) -> None:
        # Runs before the headers are written (so it also covers responses that a handler
        # prepares itself) but after aiohttp has chosen the Connection header: set both.
        if self.draining:
            response.force_close()
            response.headers[hdrs.CONNECTION] = "close"

    def abort_all(self) -> list[asyncio.Task[Any]]:
        """Cancel every request in flight; returns their tasks."""
        tasks = list(self._in_flight)
        for task in tasks:
            self._aborted.add(task)
            task.cancel()
        return tasks


class DrainingRunner(web.AppRunner):
    """An ``AppRunner`` whose :meth:`cleanup` drains first (see the module docstring)."""

    def __init__(
        self,
        app: web.Application,
        *,
        drain_timeout: float,
        guard: ConnectionGuard | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("shutdown_timeout", _CLOSE_TIMEOUT_SECONDS)
        super().__init__(app, **kwargs)
        self.drain_timeout = drain_timeout
        self.guard = guard
        self.requests = RequestTracker()
        self.requests.install(app)
        self._drained = False

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # the app has started: its responder is made
        if self.guard is None:
            return server
        quick = self.app.get(QUICK_RESPONDER)
        return guard_server(server, self.guard, quick=quick, served=self.requests.used)

    async def cleanup(self) -> None:
        if not self._drained and self.server is not None:
            await self.drain()
        await super().cleanup()

    async def drain(self) -> None:
        """Steps 1 to 4; logs what happened. :meth:`cleanup` calls it if nobody did."""
        self._drained = True
        server = self.server
        assert server is not None, "drain() before setup()"
        self.requests.draining = True
        if isinstance(server, GuardedServer):
            server.quick = None  # answers from now on say Connection: close: the route's
        loop = asyncio.get_running_loop()
        await _stop_accepting(loop, self.sites)
        for site in list(self.sites):
            await site.stop()  # closes the listening socket; open connections stay
        started = loop.time()
        log.info(
            "draining: no new connections; waiting up to %gs for %d request(s) in flight",
            self.drain_timeout,
            self.requests.in_flight,
        )
        first_seen: dict[web.RequestHandler, float] = {}
        while True:
            # Sleep first: a connection accepted just before the listener closed becomes a
            # protocol in server.connections only a few loop iterations later.
            await asyncio.sleep(_POLL_SECONDS)
            now = loop.time()
            for connection in server.connections:
                if not connection_is_idle(connection):
                    continue
                waited = now - first_seen.setdefault(connection, now)
                used = connection.transport in self.requests.used
                if used or waited >= _FIRST_REQUEST_GRACE_SECONDS:
                    connection.force_close()
            if not server.connections or loop.time() - started >= self.drain_timeout:
                break
        aborted = self.requests.abort_all()
        if aborted:
            log.warning(
                "drain timeout (%gs): aborting %d request(s) still in flight",
                self.drain_timeout,
                len(aborted),
            )
            await asyncio.wait(aborted, timeout=_ABORT_GRACE_SECONDS)
        else:
            log.info("drained in %.2fs", loop.time() - started)


async def _stop_accepting(loop: asyncio.AbstractEventLoop, sites: Iterable[web.BaseSite]) -> None:
    """Stop accepting, then let the connections accepted last become connections.

    asyncio accepts a connection in one step and attaches its transport to the listening
    ``Server`` in a later one; if the server is closed in between (Python 3.11 asserts it is
    not), the accepted socket is silently dropped and its client gets a reset. So: unregister
    the listening sockets from the loop first, give those steps their turn, and only then close.
    uvloop attaches a connection to its server in the accept itself: there is nothing to do
    (``site_server`` gives no ``asyncio.Server`` there).
    """
    for site in sites:
        server = site_server(site)
        for sock in server.sockets if server is not None else ():
            loop.remove_reader(sock.fileno())
    for _ in range(3):  # the attaching step is the first step of a task made by the accept
        await asyncio.sleep(0)
