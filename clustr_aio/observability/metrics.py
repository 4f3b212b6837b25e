"""Prometheus metrics, served at ``GET /metrics`` with the official ``prometheus-client``.

What is measured, and where:

- every request, by a middleware and a response hook: ``clustr_http_requests_total{method,
  route,status}`` and ``clustr_http_request_duration_seconds{method,route}`` (route is the
  route's path template, e.g. ``/api/upload`` or ``/uploads``, never the raw path, so the number
  of series is bounded);
- uploads, by the upload handlers (multipart; tus creations and PATCHes) through
  :meth:`Metrics.track_upload`: bytes of request bodies received, files and bytes stored,
  uploads in flight, and rejections by a stable reason name (:data:`REJECTION_REASONS`, from
  the status of the :class:`~clustr_aio.domain.errors.ClustrError`).
  The ingest pipeline and storage stay free of both HTTP and metrics.

With several worker processes (``WORKERS=N``) every worker counts its own requests, and a
scrape of any one of them must show the sum. That is prometheus-client's multiprocess mode:
each process writes its values to files in ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` merges
them. The supervisor calls :func:`prepare_multiprocess_dir` before it forks the workers and
:func:`remove_multiprocess_dir` when it exits; a scrape forgets the in-flight uploads of workers
that died (:func:`forget_dead_processes`).
A single process without that variable keeps its values in memory and also reports its own CPU,
memory and file descriptors (``process_*``).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    multiprocess,
)
from prometheus_client.aiohttp import make_aiohttp_handler

from clustr_aio.compat import pids_with_live_gauges, use_multiprocess_values
from clustr_aio.domain.errors import ClientDisconnected, ClustrError
from clustr_aio.ingest.pipeline import StoredFile

__all__ = [
    "MULTIPROCESS_ENV",
    "REJECTION_REASONS",
    "Metrics",
    "mark_worker_dead",
    "prepare_multiprocess_dir",
    "rejection_reason",
    "remove_multiprocess_dir",
]

MULTIPROCESS_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

REJECTION_REASONS: Final[Mapping[int, str]] = {
    400: "malformed",
    406: "no_files",
    413: "too_large",
    415: "unsupported_type",
    507: "insufficient_storage",
}
"""The ``reason`` label of ``clustr_upload_rejections_total``, by the error's HTTP status."""

CLIENT_DISCONNECTED: Final = "client_disconnected"

# From a 5 ms greeting to a half-hour batch of thousands of photos over a slow uplink.
DURATION_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800,
)  # fmt: skip

# A client can send any token as a method; only these become label values.
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_UNMATCHED: Final = "unmatched"

# When the middleware first saw the request (time.perf_counter()).
_STARTED = web.RequestKey("metrics_started", float)


def rejection_reason(error: ClustrError | ClientDisconnected) -> str:
    if isinstance(error, ClientDisconnected):
        return CLIENT_DISCONNECTED
    return REJECTION_REASONS.get(error.status, "other")


def route_template(request: web.Request) -> str:
    """The matched route's canonical path (``/uploads`` for every stored file), or
    ``unmatched`` for a 404/405: a bounded label, whatever paths clients make up."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else _UNMATCHED


class UploadTracker:
    """What one upload reports while the handler runs it."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def received(self, body_bytes: int) -> None:
        """Bytes of request body read, whether the upload then succeeded or not."""
        self._metrics.received_bytes.inc(body_bytes)

    def stored(self, files: Sequence[StoredFile]) -> None:
        self._metrics.stored_files.inc(len(files))
        self._metrics.stored_bytes.inc(sum(file.file_size for file in files))


class Metrics:
    """The application's metrics. One instance per application (tests build many)."""

    def __init__(self) -> None:
        directory = os.environ.get(MULTIPROCESS_ENV)
        self.multiprocess_dir = Path(directory) if directory else None
        if self.multiprocess_dir is not None:
            use_multiprocess_values()
        # Our own registry, not the global one: several applications in one process (tests)
        # must not collide, and in multiprocess mode the scrape reads the files instead.
        registry = CollectorRegistry()
        self.requests = Counter(
            "clustr_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "clustr_http_request_duration_seconds",
            "Time from a request's arrival to its response being ready (for an upload: the"
            " whole body received and stored), by method and route template.",
            ["method", "route"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.uploads_in_flight = Gauge(
            "clustr_uploads_in_flight",
            "Uploads being received right now.",
            registry=registry,
            multiprocess_mode="livesum",  # the workers' sum, dead workers left out
        )
        self.received_bytes = Counter(
            "clustr_upload_received_bytes",
            "Bytes of upload request bodies read, whatever became of the upload.",
            registry=registry,
        )
        self.stored_files = Counter(
            "clustr_upload_stored_files", "Files stored (published).", registry=registry
        )
        self.stored_bytes = Counter(
            "clustr_upload_stored_bytes", "Bytes of the files stored.", registry=registry
        )
        self.rejections = Counter(
            "clustr_upload_rejections",
            "Uploads refused, by reason: " + ", ".join(REJECTION_REASONS.values()) + ", or "
            f"{CLIENT_DISCONNECTED} when the client went away before the end.",
            ["reason"],
            registry=registry,
        )
        self.auth_refusals = Counter(
            "clustr_auth_refusals",
            "Requests refused by access control, by reason: unauthorized (401), forbidden"
            " (403: a scope, or METRICS_ALLOW), rate_limited (429), quota_exceeded (507),"
            " bad_signature (403 of a file URL).",
            ["reason"],
            registry=registry,
        )
        self.thumbnails_rendered = Counter(
            "clustr_thumbnails_rendered",
            "Thumbnails rendered by libvips (a cache miss, counted once however many requests"
            " waited for it, in every worker together); corrupt images included.",
            registry=registry,
        )
        if self.multiprocess_dir is None:
            ProcessCollector(registry=registry)
            self._exposed = registry
        else:
            self._exposed = CollectorRegistry()
            # prometheus_client's multiprocess functions lack annotations (hence the ignores).
            multiprocess.MultiProcessCollector(self._exposed, path=str(self.multiprocess_dir))  # type: ignore[no-untyped-call]
        self._collect = make_aiohttp_handler(self._exposed)
        # (method, route, status) -> its request counter and duration histogram; bounded, as
        # the labels are.
        self._request_series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    async def handler(self, request: web.Request) -> web.StreamResponse:
        """``GET /metrics``: prometheus-client's own aiohttp handler (content negotiation,
        OpenMetrics, ``name[]`` filters)."""
        if self.multiprocess_dir is not None:
            forget_dead_processes(self.multiprocess_dir)
        return await self._collect(request)

    def count_request(self, request: web.Request, status: int, seconds: float | None) -> None:
        method = request.method if request.method in _METHODS else "other"
        self.count(method, route_template(request), status, seconds)

    def count(self, method: str, route: str, status: int, seconds: float | None) -> None:
        """One request of ``method`` (one of ours, or "other") to ``route`` (its template)."""
        key = (method, route, status)
        series = self._request_series.get(key)
        if series is None:
            # labels() costs a lock and a tuple of strings every time: keep its answers.
            route = key[1]
            series = (
                self.requests.labels(method, route, str(status)),
                self.request_duration.labels(method, route),
            )
            self._request_series[key] = series
        series[0].inc()
        if seconds is not None:
            series[1].observe(seconds)

    def count_auth_refusal(self, reason: str) -> None:
        self.auth_refusals.labels(reason).inc()

    def count_rejection(self, error: ClustrError | ClientDisconnected) -> None:
        self.rejections.labels(rejection_reason(error)).inc()

    @contextlib.contextmanager
    def track_upload(self) -> Iterator[UploadTracker]:
        """Around an upload: counts it in flight, and as a rejection if it fails."""
        self.uploads_in_flight.inc()
        try:
            yield UploadTracker(self)
        except (ClustrError, ClientDisconnected) as error:
            self.count_rejection(error)
            raise
        finally:
            self.uploads_in_flight.dec()

    def middleware(self) -> Middleware:
        """Notes when a request arrived; :meth:`count_response` counts it. Install it first,
        so the duration covers the other middlewares too."""

        @web.middleware
        async def start_timer(request: web.Request, handler: Handler) -> web.StreamResponse:
            request[_STARTED] = time.perf_counter()
            try:
                return await handler(request)
            except asyncio.CancelledError:  # no response will be prepared: count it here
                self.count_request(request, 499, _elapsed(request))  # nginx's "client closed"
                raise

        return start_timer

    def count_response(self, request: web.Request, response: web.StreamResponse) -> None:
        """From ``on_response_prepare``: count a request once its status is final. A middleware
        could not: a static file's 404, 304 or 206 is decided when its response is prepared,
        after every middleware has returned; and aiohttp answers from a route's expect handler
        (a 413 or 507 instead of ``100 Continue``) before any middleware runs (no duration
        then: nothing timed it)."""
        self.count_request(request, response.status, _elapsed(request))


def _elapsed(request: web.Request) -> float | None:
    started = request.get(_STARTED)
    return None if started is None else time.perf_counter() - started


def forget_dead_processes(directory: Path) -> None:
    """Drop the in-flight gauges of worker processes that are gone (killed, crashed, replaced),
    which would otherwise count forever. Done at each scrape, so that no supervisor (ours,
    gunicorn's) has to report its dead workers; their counters stay, as totals must."""
    for pid in pids_with_live_gauges(directory):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
        except PermissionError:
            pass  # alive, under another user


# --------------------------------------------------------------------------------------------
# For the supervisor of WORKERS=N processes

_created_dir: Path | None = None


def prepare_multiprocess_dir() -> Path:
    """Call once in the supervisor, before forking workers: the metrics directory is
    ``$PROMETHEUS_MULTIPROC_DIR`` if set (created if missing, emptied of a previous run's
    files), else a new private temporary directory, exported in the environment so that the
    workers (forked or spawned) find it."""
    global _created_dir
    configured = os.environ.get(MULTIPROCESS_ENV)
    if configured:
        directory = Path(configured)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in glob.glob(str(directory / "*.db")):
            os.unlink(stale)
    else:
        directory = Path(tempfile.mkdtemp(prefix="clustr-aio-metrics-"))
        _created_dir = directory
        os.environ[MULTIPROCESS_ENV] = str(directory)
    # prometheus-client chose in-memory values when it was imported, before the variable was
    # set: the workers forked from here must count into files.
    use_multiprocess_values()
    return directory


def mark_worker_dead(pid: int) -> None:
    """Worker ``pid`` is gone: its in-flight gauge no longer counts (its counters and
    histograms stay: totals never go down). A scrape does this by itself for every dead pid;
    a supervisor may call it right after reaping a worker."""
    directory = os.environ.get(MULTIPROCESS_ENV)
    if directory:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def remove_multiprocess_dir() -> None:
    """Call in the supervisor when it exits: removes the directory if
    :func:`prepare_multiprocess_dir` created it (a configured one is left for the next run)."""
    global _created_dir
    if _created_dir is not None:
        shutil.rmtree(_created_dir, ignore_errors=True)
        _created_dir = None
