"""Entry point for gunicorn's aiohttp worker, the documented alternative to ``WORKERS``::

    gunicorn 'clustr_aio.gunicorn_app:app' --worker-class aiohttp.GunicornWebWorker \\
        --workers 2 --bind 127.0.0.1:5000 --graceful-timeout 45

``aiohttp.GunicornWebWorker`` calls an async factory without arguments in each worker and
takes an ``AppRunner`` from it as is: returning :class:`~clustr_aio.drain.DrainingRunner` gives
gunicorn's workers the same graceful drain (``SHUTDOWN_TIMEOUT``) as ``clustr-aio`` itself,
where aiohttp's own runner would cut uploads in flight short. gunicorn binds the sockets and
supervises the workers: ``HOST``, ``PORT`` and ``WORKERS`` give way to its own options.
"""

from __future__ import annotations

from clustr_aio.config import load_settings
from clustr_aio.drain import DrainingRunner
from clustr_aio.logging_setup import configure_logging
from clustr_aio.server import make_runner

__all__ = ["app"]


async def app() -> DrainingRunner:
    settings = load_settings()
    configure_logging(level=settings.log_level, log_format=settings.log_format)
    return make_runner(settings)
