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

:func:`step_lines` says what each step costs on its own (issue 16 asks for it beside the
figures): each measured over the scenario's files in the bench's own process, as the server
receives them, since the server's CPU cannot be split by step from outside.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from clustr_aio.storage.base import Buffer

if TYPE_CHECKING:  # the server's prelude imports this module: nothing it does not need
    from bench.data import DataSet

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


def step_cpu(files: Sequence[Path], *, chunk: int = 256 * 1024) -> dict[str, float]:
    """Each step's own CPU seconds over ``files``, measured in this process on the same bytes
    in the server's read size: ``sha256`` (the server's hashing thread, off the event loop)
    and ``image check`` (structure, size and metadata filter, on the event loop)."""
    import hashlib
    import time

    from clustr_aio.images.structure import image_check

    clock = time.thread_time
    spent = {"sha256": 0.0, "image check": 0.0}
    for path in files:
        digest = hashlib.sha256()
        check = image_check("image/jpeg", path.name, max_pixels=100_000_000, strip="location")
        assert check is not None
        with path.open("rb") as source:
            while data := source.read(chunk):
                start = clock()
                digest.update(data)
                hashed = clock()
                check.feed(data)
                spent["sha256"] += hashed - start
                spent["image check"] += clock() - hashed
        start = clock()
        check.finish()
        spent["image check"] += clock() - start
    return spent


def step_lines(keys: Collection[str], data: DataSet) -> list[str]:
    """The per-step lines for the scenarios run (``keys``) that have per-file work."""
    lines = []
    for key, files, per, repeats in (
        ("L", (data.big,), "", 1),
        ("B", data.jpegs, "", 3),
        ("C", (data.single,), " per request", 5),
    ):
        if key in keys or f"{key}0" in keys:
            runs = [step_cpu(files) for _ in range(repeats)]  # the least disturbed of each
            spent = {step: min(run[step] for run in runs) for step in runs[0]}
            steps = ", ".join(
                f"{step} {s * 1e3:.2f} ms{per}" if per else f"{step} {s:.2f} s"
                for step, s in spent.items()
            )
            lines.append(f"steps of {key}'s per-file work, each alone, in this process: {steps}")
    return lines
