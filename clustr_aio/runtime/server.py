"""The process model, composed: listening sockets (bound here or inherited from systemd), one
serving process or a supervisor with workers, readiness and watchdog reports, and a graceful
drain on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import signal
import socket
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from clustr_aio.observability import metrics
from clustr_aio.observability.access_log import AccessLogger
from clustr_aio.runtime import event_loop, systemd
from clustr_aio.runtime.drain import DrainingRunner
from clustr_aio.runtime.protocol import NO_LIMIT, ConnectionGuard, limit_accept_error_logs
from clustr_aio.runtime.systemd import Notifier, SystemdNotifier
from clustr_aio.runtime.workers import Supervisor, WorkerNotifier
from clustr_aio.settings import Settings
from clustr_aio.storage.factory import preload_storage
from clustr_aio.storage.local import sweep_stale_incoming
from clustr_aio.web.app import create_app
from clustr_aio.web.openapi.assets import AssetsNotInstalled, docs_assets

__all__ = [
    "PROTOCOL_OPTIONS",
    "StartupError",
    "listening_sockets",
    "make_runner",
    "prepare",
    "run",
    "serve",
]

log = logging.getLogger("clustr_aio")
access_log = logging.getLogger("clustr_aio.access")

PROTOCOL_OPTIONS: Final[Mapping[str, Any]] = {
    "auto_decompress": False,  # a compressed body is refused, never inflated (web.protection)
}
"""Options of aiohttp's RequestHandler, given to every server (tests' servers too)."""

_BACKLOG = 1024  # uploads arrive in bursts (a whole album at once); the kernel caps it anyway


class StartupError(Exception):
    """The server cannot start; ``str(e)`` is the one line to print, without a traceback."""


def run(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT with ``settings.workers`` processes; the exit status.

    Raises:
        StartupError: see :func:`prepare` and :func:`listening_sockets`.
    """
    prepare(settings)
    listeners = listening_sockets(settings)
    notifier = SystemdNotifier()
    if settings.workers == 1:
        event_loop.run(serve(settings, listeners=listeners, notifier=notifier), settings.event_loop)
        return 0

    def run_worker(worker_notifier: WorkerNotifier) -> int:
        event_loop.run(
            serve(settings, listeners=listeners, notifier=worker_notifier), settings.event_loop
        )
        return 0

    preload_storage(settings)  # shared by the workers, not imported by each
    supervisor = Supervisor(
        workers=settings.workers,
        listeners=listeners,
        notifier=notifier,
        run_worker=run_worker,
        stop_timeout=settings.shutdown_timeout,
    )
    # The workers count into files in one directory; any worker's /metrics shows their sum.
    metrics.prepare_multiprocess_dir()
    try:
        return supervisor.run()
    finally:
        metrics.remove_multiprocess_dir()  # only in the supervisor: workers leave by os._exit


def listening_sockets(settings: Settings) -> list[socket.socket]:
    """The sockets systemd passed (socket activation), else new ones bound to HOST and PORT.

    Raises:
        StartupError: HOST does not resolve, or HOST:PORT cannot be bound.
    """
    inherited = systemd.listen_fds()
    if inherited:
        log.info("using %d listening socket(s) passed by systemd", len(inherited))
        return inherited
    try:
        return bind(settings.host, settings.port)
    except socket.gaierror as error:
        raise StartupError(f"HOST: cannot resolve {settings.host!r}: {error.strerror}") from None
    except OSError as error:
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        raise StartupError(
            f"HOST, PORT: cannot listen on {host}:{settings.port}: {error.strerror}"
        ) from None


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening TCP sockets on every address ``host`` resolves to, as asyncio's
    ``create_server`` would make them; bound here so that workers can share them."""
    infos = socket.getaddrinfo(
        host, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # One socket per family, as asyncio does: "::" must not also claim IPv4.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(_BACKLOG)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def make_runner(settings: Settings, app: web.Application | None = None) -> DrainingRunner:
    """The application (``create_app(settings)`` unless given) in a runner that drains for
    ``SHUTDOWN_TIMEOUT`` before it closes."""
    guard = ConnectionGuard.fitted(
        header_timeout=settings.request_header_timeout or NO_LIMIT,
        body_idle_timeout=settings.body_idle_timeout or NO_LIMIT,
        max_connections=settings.max_connections,
        min_body_rate=settings.min_body_rate,
        send_timeout=settings.send_timeout,
    )
    return DrainingRunner(
        create_app(settings) if app is None else app,
        drain_timeout=settings.shutdown_timeout,
        guard=guard,
        keepalive_timeout=settings.keepalive_timeout or NO_LIMIT,
        access_log_class=AccessLogger,
        access_log=access_log if settings.access_log else None,
        **PROTOCOL_OPTIONS,
    )


async def serve(
    settings: Settings, *, listeners: Sequence[socket.socket], notifier: Notifier
) -> None:
    """Serve on ``listeners`` until SIGTERM or SIGINT, then drain and return."""
    running = asyncio.get_running_loop()
    limit_accept_error_logs(running)
    runner = make_runner(settings)
    await runner.setup()  # opens the storage, which sweeps what dead processes left behind
    watchdog: asyncio.Task[None] | None = None
    try:
        names = []
        for sock in listeners:
            site = web.SockSite(runner, sock)
            await site.start()
            names.append(site.name)
        check_writable(settings.upload_folder)
        stop = _stop_event()
        log.info(
            "clustr_aio listening on %s, storing uploads in %s, serving them at %s%s (%s)",
            ", ".join(names),
            settings.upload_folder,
            settings.base_url,
            settings.upload_url_path,
            event_loop.loop_name(running),
        )
        # What start-up made (modules, the app, the storage) lives as long as the process:
        # frozen (its garbage collected first), it is no longer walked by every full
        # collection. A 500-photo upload promotes enough objects that one of three started a
        # full collection, which walked the whole heap: 140-225 ms of the loop's time on a
        # loaded machine, 47-75 ms an upload; none since (bench B, in the README).
        gc.collect()
        gc.freeze()
        notifier.ready(f"serving on {', '.join(names)}")
        watchdog = asyncio.create_task(_feed_watchdog(notifier, stop))
        await stop.wait()
        in_flight = runner.requests.in_flight
        log.info("stopping: draining %d request(s) in flight", in_flight)
        notifier.stopping(f"stopping: draining {in_flight} request(s) in flight")
        await runner.drain()
    finally:
        await runner.cleanup()
        if watchdog is not None:
            watchdog.cancel()


def prepare(settings: Settings) -> None:
    """Check what every serving process needs, once, before anything is bound or forked: a
    problem is then one line from one process, not a traceback from each worker.

    Also sweeps the upload folder's ``.incoming`` (see :func:`sweep_stale_incoming`).

    Raises:
        StartupError: the upload folder cannot be created or written to, the docs assets
            are not installed, or ``EVENT_LOOP=uvloop`` and uvloop is not.
    """
    try:
        event_loop.loop_factory(settings.event_loop)
    except ModuleNotFoundError:
        raise StartupError(
            "EVENT_LOOP: uvloop is not installed (pip install uvloop), or set EVENT_LOOP=asyncio"
        ) from None
    prepare_upload_folder(settings.upload_folder)
    if settings.storage == "local":
        # Once, before any worker starts: what dead processes published and never sealed is
        # rolled back before a worker's reconciliation could adopt it (a worker's own sweep
        # would race the others' reconciliations).
        sweep_stale_incoming(settings.upload_folder)
    try:
        docs_assets()
    except AssetsNotInstalled as error:
        raise StartupError(str(error)) from None


def prepare_upload_folder(folder: Path) -> None:
    """Create ``folder`` if need be, and write a file into it: ``os.access`` says yes to root
    on a read-only or sandboxed path that a real write refuses."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StartupError(f"UPLOAD_FOLDER: {str(folder)!r} is not a directory") from None
    except OSError as error:
        raise StartupError(
            f"UPLOAD_FOLDER: cannot create {str(folder)!r}: {error.strerror}"
        ) from None
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise StartupError(
            f"UPLOAD_FOLDER: cannot write to {str(folder)!r}: {error.strerror}"
        ) from None


def check_writable(folder: Path) -> None:
    """Fail start-up, rather than every upload, when the folder cannot be written (a read-only
    mount, a ``ReadWritePaths=`` naming another folder, wrong ownership)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OSError(errno.EACCES, "the upload folder is not writable", str(folder))


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def request_stop(sig: signal.Signals) -> None:
        if stop.is_set():
            log.info("%s: already stopping", sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, request_stop, sig)
    return stop


async def _feed_watchdog(notifier: Notifier, stop: asyncio.Event) -> None:
    """Ping while the event loop runs: a loop that hangs stops the pings, and is restarted."""
    interval = notifier.watchdog_interval
    if interval is None:
        return
    while True:
        if not notifier.watchdog() and not stop.is_set():
            log.error("the supervisor is gone; stopping")
            stop.set()
        await asyncio.sleep(interval)
