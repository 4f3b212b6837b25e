"""The application factory: ``create_app(settings)`` wires settings, storage, routes and
middlewares. Resources are opened and closed in ``cleanup_ctx``, in dependency order."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import cast

import aiohttp_cors
from aiohttp import hdrs, web

from clustr_aio.catalog.base import Catalog
from clustr_aio.catalog.factory import open_catalog
from clustr_aio.catalog.ids import is_id
from clustr_aio.catalog.reconcile import reconcile, sweep_orphans
from clustr_aio.compat import cors_response_hook
from clustr_aio.domain.limits import UploadLimits
from clustr_aio.images.thumbnails import THUMBNAIL_DIR, Thumbnailer
from clustr_aio.ingest.pipeline import Dedupe, IngestPolicy
from clustr_aio.observability.metrics import Metrics
from clustr_aio.settings import Settings
from clustr_aio.storage.base import (
    DerivedStoring,
    OrphanSweeping,
    Reading,
    SpaceReporting,
    Storage,
)
from clustr_aio.storage.factory import open_storage
from clustr_aio.storage.local import LocalStorage
from clustr_aio.storage.resumable import Resumable
from clustr_aio.tus.handler import TusHandler
from clustr_aio.tus.sweeper import sweep_forever
from clustr_aio.web import middlewares
from clustr_aio.web.guard import Guard
from clustr_aio.web.hot_files import HotFiles
from clustr_aio.web.hot_thumbnails import PREFIX as THUMBNAILS_PREFIX
from clustr_aio.web.hot_thumbnails import HotThumbnails
from clustr_aio.web.keys import (
    CATALOG,
    FILE_READER,
    GUARD,
    INGEST_POLICY,
    METRICS,
    QUICK_RESPONDER,
    SETTINGS,
    SPACE_REPORTER,
    STORAGE,
    THUMBNAILER,
    TUS,
    UPLOAD_SLOTS,
)
from clustr_aio.web.protection import UploadSlots
from clustr_aio.web.quick import QuickResponder, QuickResponders
from clustr_aio.web.routes import (
    docs,
    files,
    health,
    keys,
    root,
    stored,
    thumbnails,
    tus,
    upload,
    upload_page,
)

log = logging.getLogger("clustr_aio.images")
ResponseHook = Callable[[web.Request, web.StreamResponse], Awaitable[None]]


def create_app(settings: Settings) -> web.Application:
    metrics = Metrics()
    app = web.Application(
        middlewares=[
            metrics.middleware(),  # first: it times everything and sees every final status
            middlewares.request_id,
            middlewares.json_errors,
            middlewares.guard,  # inside json_errors, which answers its refusals
        ],
    )
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[GUARD] = Guard(settings, metrics, lambda: app[CATALOG])
    app[UPLOAD_SLOTS] = UploadSlots(settings.max_concurrent_uploads)
    app[INGEST_POLICY] = IngestPolicy(
        allowed_extensions=settings.allowed_extensions,
        limits=UploadLimits(
            max_file_size=settings.max_file_size,
            max_request_size=settings.max_request_size,
            max_files=settings.max_files,
        ),
        dedupe=cast(Dedupe, settings.dedupe),  # the setting's parser allows these only
        max_image_pixels=settings.max_image_pixels,
        strip_metadata=settings.strip_metadata,
    )
    app.cleanup_ctx.append(_storage)
    app.cleanup_ctx.append(_rate_limits)
    app.cleanup_ctx.append(_thumbnailer)

    app.router.add_routes(root.routes)
    app.router.add_routes(upload.routes)
    app.router.add_routes(files.routes)
    app.router.add_routes(tus.routes)
    app.router.add_routes(upload_page.routes)
    if settings.auth == "keys":  # in the open mode, keys are managed with the CLI only
        app.router.add_routes(keys.routes)
    app.router.add_routes(thumbnails.routes)
    app.router.add_routes(health.routes)
    app.router.add_routes(docs.routes)
    stored.add_routes(app.router, settings.upload_url_path)
    # Credentials (cookies, TLS client certificates) from the listed origins only: with "*",
    # aiohttp-cors would echo any origin, and credentials with it.
    credentials = settings.auth == "keys" and settings.cors_origins != ("*",)
    cors_hook = _allow_cors(app, settings.cors_origins, credentials=credentials)
    app.on_response_prepare.append(
        _response_hook(
            metrics,
            cors_hook,
            rate_limits=app[GUARD].limits_rates,
            vary_on_origin=bool(settings.cors_origins),
        )
    )
    tus.add_discovery(app)  # on the OPTIONS routes CORS added
    return app


async def _storage(app: web.Application) -> AsyncIterator[None]:
    """The storage, then the catalog of its files (reconciled with them before serving)."""
    settings = app[SETTINGS]
    async with open_storage(settings) as storage, open_catalog(settings) as catalog:
        app[STORAGE] = storage
        if isinstance(storage, Reading):
            app[FILE_READER] = storage
        if isinstance(storage, SpaceReporting):  # asked once, not per upload
            app[SPACE_REPORTER] = storage
        app[CATALOG] = catalog
        await reconcile(catalog, storage)
        # Background sweeps over what this storage offers: a shared store's orphans, and the
        # expired resumable uploads.
        sweeps: list[asyncio.Task[None]] = []
        if isinstance(storage, OrphanSweeping):
            every = min(3600.0, max(1.0, settings.s3_orphan_grace / 2))
            sweeps.append(asyncio.create_task(_sweep_every(every, catalog, storage)))
        if isinstance(storage, Resumable):
            app[TUS] = TusHandler(
                store=storage.resumable_uploads(),
                storage=storage,
                policy=app[INGEST_POLICY],
                catalog=catalog,
                expiry=settings.tus_expiry,
            )
            sweeps.append(asyncio.ensure_future(sweep_forever(app[TUS])))
        try:
            yield
        finally:
            for sweep in sweeps:
                sweep.cancel()
            for sweep in sweeps:
                with contextlib.suppress(asyncio.CancelledError):
                    await sweep
            if TUS in app:  # before the storage closes: its live runs' batches discarded
                await app[TUS].close()


async def _sweep_every(seconds: float, catalog: Catalog, storage: Storage) -> None:
    """A shared store's orphans, swept at start-up and then every ``seconds``, by every
    instance (it is safe: see :func:`sweep_orphans`)."""
    while True:
        await sweep_orphans(catalog, storage)
        await asyncio.sleep(seconds)


async def _rate_limits(app: web.Application) -> AsyncIterator[None]:
    """The rate limits' table, shared with the other workers: opened in each (after the fork,
    so that each holds a lock of its own)."""
    guard = app[GUARD]
    guard.open()
    try:
        yield
    finally:
        guard.close()


async def _thumbnailer(app: web.Application) -> AsyncIterator[None]:
    """The thumbnail renderer and its cache, under a dot-name of the upload folder: on the same
    filesystem (atomic renames, a sandbox that may write only there), and never served, since
    /uploads and nginx refuse dot-paths."""
    settings = app[SETTINGS]
    thumbnailer = Thumbnailer(
        settings.upload_folder / THUMBNAIL_DIR,
        workers=render_threads(os.cpu_count() or 1, settings.workers),
        on_rendered=app[METRICS].thumbnails_rendered.inc,
        # A store every instance shares keeps the thumbnails; the folder is then a cache.
        shared=storage if isinstance(storage := app[STORAGE], DerivedStoring) else None,
    )
    await thumbnailer.start()
    app[THUMBNAILER] = thumbnailer
    quick = _quick_responders(app, thumbnailer)
    if quick is not None:
        app[QUICK_RESPONDER] = quick
    await _prune_thumbnails(app[CATALOG], thumbnailer)
    yield
    await thumbnailer.close()


def _quick_responders(app: web.Application, thumbnailer: Thumbnailer) -> QuickResponders | None:
    """What the connections answer themselves, as far as the settings allow (None: nothing)."""
    settings, metrics = app[SETTINGS], app[METRICS]
    responders: list[tuple[str, QuickResponder]] = []
    if HotThumbnails.applies(settings):
        responders.append((THUMBNAILS_PREFIX, HotThumbnails(settings, thumbnailer, metrics)))
    storage = app[STORAGE]
    if HotFiles.applies(settings) and isinstance(storage, LocalStorage):
        files = HotFiles(settings, storage, metrics)
        responders.append((files.prefix, files))
    return QuickResponders(responders) if responders else None


def render_threads(cores: int, workers: int) -> int:
    """Render threads per process: the cores shared among the WORKERS (at most 2, at least 1).
    More renders side by side than cores only add their memory: each holds its decode and, in
    a thread of its own, a malloc arena (2 threads in each of 2 workers on 2 cores: 55 MiB of
    peak per worker against 47 with 1)."""
    return max(1, min(2, cores // workers))


async def _prune_thumbnails(catalog: Catalog, thumbnailer: Thumbnailer) -> None:
    """Thumbnails of files that have no record any more go, in the one process that holds the
    catalog's maintenance lock (as the reconciliation, which never looks into dot-folders)."""
    async with catalog.exclusive() as held:
        if not held:
            return
        recorded = functools.partial(_recorded_ids, catalog)
        pruned = await thumbnailer.prune(recorded, before=time.time())
    if pruned:
        log.info("thumbnails of %d files without a record removed", pruned)


async def _recorded_ids(catalog: Catalog, names: list[str]) -> set[str]:
    """Which of ``names`` are the ids of records."""
    return {record.id for record in await catalog.get_many([n for n in names if is_id(n)])}


def _allow_cors(
    app: web.Application, origins: tuple[str, ...], *, credentials: bool
) -> ResponseHook:
    """Set up aiohttp-cors for every route; returns its response hook, taken out of
    ``on_response_prepare`` for :func:`_response_hook` to call (``remove`` fails at startup,
    not silently, if aiohttp-cors changes)."""
    # aiohttp-cors has no "allow everything" switch: spell it out per origin. It answers a
    # preflight with the very headers asked for, Authorization and X-API-Key included.
    options = aiohttp_cors.ResourceOptions(
        allow_credentials=credentials, expose_headers="*", allow_headers="*", max_age=600
    )
    cors = aiohttp_cors.setup(app, defaults=dict.fromkeys(origins, options))
    for route in list(app.router.routes()):
        cors.add(route)
    hook = cors_response_hook(cors)
    app.on_response_prepare.remove(hook)
    return hook


def _response_hook(
    metrics: Metrics, cors_hook: ResponseHook, *, rate_limits: bool, vary_on_origin: bool
) -> ResponseHook:
    """What every response gets, in one ``on_response_prepare`` hook: aiohttp awaits each hook
    in turn, a coroutine per hook per response, for steps that are mostly a line each.

    - the common headers (nosniff, the request id), the ``RateLimit`` headers when rates are
      limited, then the request counted, its status final; ``Tus-Resumable`` under /api/tus/;
    - aiohttp-cors's hook only with an ``Origin`` header: it looks up the route's configuration
      (a ChainMap and two subclass checks) before it looks for one, without which nothing is
      CORS (its step 6.1.1), and most requests have none (same-origin ones, ``<img>`` loads);
    - ``Vary: Origin`` when CORS is on: aiohttp-cors answers with the caller's own Origin (even
      for "*"), so a shared cache in front must keep one answer per Origin.
    """

    async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
        middlewares.common_headers(request, response)
        if rate_limits:
            await middlewares.rate_limit_headers(request, response)
        metrics.count_response(request, response)
        await tus.tus_headers(request, response)
        if hdrs.ORIGIN in request.headers:
            await cors_hook(request, response)
        if vary_on_origin:
            response.headers.add(hdrs.VARY, hdrs.ORIGIN)

    return on_response_prepare
