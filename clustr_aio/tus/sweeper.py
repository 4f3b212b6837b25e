"""The expiry sweeper: expired uploads removed, every so often, in every process (the store's
locks keep two from removing one upload; a held upload is left for the next round)."""

from __future__ import annotations

import asyncio
import logging

from clustr_aio.tus.handler import TusHandler

__all__ = ["sweep_forever", "sweep_interval"]

log = logging.getLogger("clustr_aio")


def sweep_interval(expiry: float) -> float:
    """A quarter of the expiry, between half a second and a minute: an expired upload lingers
    (answering 410) at most that long before it is a 404."""
    return min(max(expiry / 4, 0.5), 60.0)


async def sweep_forever(tus: TusHandler) -> None:
    """Sweep at once (a restart finishes what a crash interrupted), then every interval."""
    interval = sweep_interval(tus.expiry)
    while True:
        try:
            removed = await tus.sweep()
        except OSError as error:  # a full or unmounted disk: try again next round
            log.error("sweeping expired uploads failed: %s", error)
        else:
            if removed:
                log.info("removed %d expired resumable uploads", removed)
        await asyncio.sleep(interval)
