"""The event loop a serving process runs on (``EVENT_LOOP``).

uvloop runs asyncio's API on libuv: its transports read into one buffer per loop and call the
protocol without asyncio's Python layers around each ``recv`` and ``send``, for less server
CPU per byte and per request than asyncio's selector loop (the README's issue-16 figures).
Everything clustr_aio does with a transport works on both loops: ``web/sendfile.py`` borrows
the socket by its descriptor, and writes the rest of a file through the transport where uvloop
has no ``loop.sendfile``; ``runtime/protocol.py`` lowers asyncio's per-connection ``recv`` size
only where there is one (uvloop reads into a buffer shared by all connections, so a crowd of
stalled ones holds none); ``runtime/drain.py`` unregisters asyncio's listening sockets before
closing them, which uvloop, attaching a connection to its server as it accepts it, does not
need. At the descriptor limit asyncio stops accepting for a second and leaves new connections
in the backlog, while libuv accepts and closes them at once (with a descriptor it keeps in
reserve), so their clients know at once.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Coroutine
from typing import Any, Literal

__all__ = ["EventLoopChoice", "loop_factory", "loop_name", "run"]

EventLoopChoice = Literal["auto", "uvloop", "asyncio"]
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(choice: EventLoopChoice) -> LoopFactory:
    """What makes the loop ``choice`` names.

    Raises:
        ModuleNotFoundError: ``choice`` is ``uvloop`` and uvloop is not installed.
    """
    if choice == "asyncio":
        return asyncio.new_event_loop
    try:
        uvloop = importlib.import_module("uvloop")
    except ModuleNotFoundError:
        if choice == "uvloop":
            raise
        return asyncio.new_event_loop
    factory: LoopFactory = uvloop.new_event_loop
    return factory


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``, for the start-up log line."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, None], choice: EventLoopChoice) -> None:
    """``asyncio.run(main)`` on the loop ``choice`` names (see :func:`loop_factory`)."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        runner.run(main)
