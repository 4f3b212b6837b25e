"""The bench-only switch for per-file work that nginx does not do.

nginx's ``PUT`` writes bytes and nothing else; clustr_aio also hashes every file (sha256, for
the catalog and DEDUPE) and checks an image's structure and filters its metadata as it passes
(:mod:`clustr_aio.images.structure`). To hold the ingest path itself to nginx's cost,
scenarios L0, B0 and C0 run a server started with this module's prelude, which replaces that
work with nothing; the difference between L and L0 (B and B0, C and C0) is then that work's
own CPU.

The switch patches the pipeline from outside, in the bench's server process only: the product
has no setting that skips a check. A step of per-file work added to ``ingest_file`` later is
switched off by one more line in :func:`switch_off`.
"""

from __future__ import annotations

from typing import Final

from clustr_aio.storage.base import Buffer

PRELUDE: Final = "import bench.filework; bench.filework.switch_off()"
"""Python for ``ClustrServer(prelude=...)``: run before ``python -m clustr_aio``."""

_NO_DIGEST: Final = "0" * 64


class NullHasher:
    """StreamHasher's interface, hashing nothing: every file's digest is 64 zeros (with
    DEDUPE=off, as the bench runs, no digest is ever compared)."""

    __slots__ = ()

    async def update(self, chunk: Buffer) -> None:
        pass

    async def hexdigest(self) -> str:
        return _NO_DIGEST

    def finish(self) -> None:
        pass

    def result(self) -> str:
        return _NO_DIGEST

    def release(self) -> None:
        pass


def no_image_check(*_args: object, **_kwargs: object) -> None:
    """``image_check``'s answer for a type it does not check: the bytes pass as they are."""


def switch_off() -> None:
    """Make ``ingest_file`` skip sha256 and the image checks in this process."""
    from clustr_aio.ingest import pipeline

    vars(pipeline)["StreamHasher"] = NullHasher
    vars(pipeline)["image_check"] = no_image_check
