"""The two systemd protocols a service speaks, hand-written (the ``sdnotify`` package has been
unmaintained since 2017, and each protocol is a few lines over the socket module):

- ``sd_notify``: datagrams such as ``READY=1`` to the AF_UNIX socket named by ``NOTIFY_SOCKET``
  (a path, or ``@name`` in the abstract namespace);
- socket activation: listening sockets inherited as file descriptors 3, 4, … when
  ``LISTEN_PID`` is this process and ``LISTEN_FDS`` says how many.

Outside systemd (no ``NOTIFY_SOCKET``, no ``LISTEN_FDS``) everything here does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, MutableMapping
from typing import Final, Protocol

__all__ = ["SD_LISTEN_FDS_START", "Notifier", "SystemdNotifier", "listen_fds", "notify"]

log = logging.getLogger("clustr_aio")

SD_LISTEN_FDS_START: Final = 3
"""The first inherited descriptor (sd_listen_fds(3))."""


def notify(message: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (newline-separated ``KEY=value`` lines) to systemd's notification socket.

    Returns False when there is no ``NOTIFY_SOCKET`` (not started by systemd, or by a unit that
    is not ``Type=notify``) or it cannot be reached; a service must run on without it.
    """
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address.startswith(("/", "@")):
        return False  # unset, or a vsock address this server has no use for
    if address.startswith("@"):
        address = "\0" + address[1:]  # the abstract namespace: no file, a leading NUL byte
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
    except OSError as error:
        log.warning("cannot notify systemd at %s: %s", address.lstrip("\0"), error)
        return False
    return True


class Notifier(Protocol):
    """Whoever supervises this serving process: systemd, or the workers' supervisor."""

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between :meth:`watchdog` calls, or None when nobody watches."""

    def ready(self, status: str) -> None:
        """The port is listening and the upload folder writable: requests are served."""

    def status(self, status: str) -> None:
        """A one-line state for humans (``systemctl status``)."""

    def stopping(self, status: str) -> None:
        """A graceful stop has begun."""

    def watchdog(self) -> bool:
        """The event loop is alive. False: the supervisor is gone and this process should stop."""


class SystemdNotifier:
    """A :class:`Notifier` that talks ``sd_notify``; silent when systemd did not ask for it."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = dict(os.environ if environ is None else environ)
        self._watchdog_interval = _watchdog_interval(self._environ)

    @property
    def watchdog_interval(self) -> float | None:
        return self._watchdog_interval

    def ready(self, status: str) -> None:
        notify(f"READY=1\nSTATUS={status}\nMAINPID={os.getpid()}", environ=self._environ)

    def status(self, status: str) -> None:
        notify(f"STATUS={status}", environ=self._environ)

    def stopping(self, status: str) -> None:
        notify(f"STOPPING=1\nSTATUS={status}", environ=self._environ)

    def watchdog(self) -> bool:
        notify("WATCHDOG=1", environ=self._environ)
        return True


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Half of ``WATCHDOG_USEC`` in seconds (sd_watchdog_enabled(3) advises pinging at half the
    timeout), when the watchdog is meant for this process: ``WATCHDOG_PID`` unset or ours."""
    pid = environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2 / 1_000_000 if usec > 0 else None


def listen_fds(environ: MutableMapping[str, str] | None = None) -> list[socket.socket]:
    """The listening sockets systemd passed (``clustr-aio.socket``), empty when none.

    The variables are removed from ``environ`` (default ``os.environ``) once read, as
    ``sd_listen_fds(1)`` does, so that a child process never takes them for its own; the
    descriptors are made close-on-exec for the same reason.
    """
    env = os.environ if environ is None else environ
    pid, count = env.pop("LISTEN_PID", ""), env.pop("LISTEN_FDS", "")
    env.pop("LISTEN_FDNAMES", None)
    if pid != str(os.getpid()) or not count.isdigit():
        return []
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)):
        os.set_inheritable(fd, False)
        sockets.append(socket.socket(fileno=fd))  # family and type are read from the descriptor
    return sockets
