"""Scenario B0's reference: the same clustr_aio with the catalog taken out, as issue 11 asks
("B with the catalog vs the same server with the catalog disabled"). The server has no such
setting, so this prelude, run before ``python -m clustr_aio`` (see :class:`bench.ab.Variant`),
patches it out: no sha256 of the bytes and no database (nothing opened, no insert, no
start-up reconciliation). Everything else is the server of scenario B.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from bench.filework import NullHasher

__all__ = ["PRELUDE", "disable"]

PRELUDE = "import bench.no_catalog; bench.no_catalog.disable()"


class _NoCatalog:
    async def add(self, records: Sequence[Any]) -> None:
        pass

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[bool]:
        yield False  # "another process reconciles": nothing is read


@contextlib.asynccontextmanager
async def _open_no_catalog(settings: Any) -> AsyncIterator[Any]:
    yield _NoCatalog()


def disable() -> None:
    from clustr_aio.ingest import pipeline
    from clustr_aio.web import app

    vars(pipeline)["StreamHasher"] = NullHasher
    app.open_catalog = _open_no_catalog  # type: ignore[attr-defined]
