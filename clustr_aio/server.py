"""Serve the application until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from clustr_aio.access_log import AccessLogger
from clustr_aio.app import create_app
from clustr_aio.config import Settings

log = logging.getLogger("clustr_aio")
access_log = logging.getLogger("clustr_aio.access")


async def serve(settings: Settings) -> None:
    runner = web.AppRunner(
        create_app(settings),
        access_log_class=AccessLogger,
        access_log=access_log if settings.access_log else None,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        log.info(
            "clustr_aio listening on %s, storing uploads in %s, serving them at %s%s",
            site.name,
            settings.upload_folder,
            settings.base_url,
            settings.upload_url_path,
        )
        await _until_stopped()
        log.info("stopping")
    finally:
        await runner.cleanup()


async def _until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
