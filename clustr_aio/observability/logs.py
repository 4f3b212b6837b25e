"""Logging to stderr in a form fit for where stderr goes.

- ``LOG_FORMAT=text`` (default): ``2026-01-31 12:00:00,123 INFO clustr_aio: message`` lines.
- ``LOG_FORMAT=json``: one JSON object per line: ``time``, ``level``, ``logger``, ``message``,
  ``request_id`` (while a request is being handled) and ``exception`` (the formatted traceback).
- ``WORKERS`` > 1: the supervisor and its workers share stderr, so every line says which process
  wrote it: ``… INFO [pid 1234] clustr_aio: message`` in text, ``"pid": 1234`` in JSON (the
  journal cannot tell them apart either: it records the pid that opened the stream).
- stderr is the systemd journal (``JOURNAL_STREAM`` names stderr's device and inode, as
  systemd sets it for ``StandardError=journal``): every line starts with a syslog priority such
  as ``<6>`` so journald files it at the right level (``SyslogLevelPrefix=``, on by default), and
  text lines carry no timestamp, as journald records its own.

The request id reaches every record logged while a request is handled through a context
variable that the request-id middleware sets (:func:`bind_request_id`).
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import Final, TextIO

from clustr_aio.compat import BadHttpMessage

__all__ = ["bind_request_id", "configure_logging", "is_journal_stream"]

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "clustr_request_id", default=None
)

# sd-daemon(3) priorities: LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG.
_SYSLOG_PRIORITY: Final[Mapping[int, int]] = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def _text_format(*, journal: bool, with_pid: bool) -> str:
    """``%(asctime)s %(levelname)s [pid %(process)d] %(name)s: %(message)s``: no timestamp
    under the journal (it records its own), the pid only when there are several processes."""
    stamp = "" if journal else "%(asctime)s "
    pid = "[pid %(process)d] " if with_pid else ""
    return f"{stamp}%(levelname)s {pid}%(name)s: %(message)s"


def bind_request_id(request_id: str) -> contextvars.Token[str | None]:
    """Attach ``request_id`` to every record logged from the current task (and tasks it
    starts); hand the token back to :func:`unbind_request_id` when the request is done."""
    return _request_id.set(request_id)


def unbind_request_id(token: contextvars.Token[str | None]) -> None:
    _request_id.reset(token)


def is_journal_stream(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """Whether ``stream`` is connected to the journal: ``JOURNAL_STREAM`` is "device:inode" of
    the journal's socket, compared with the stream's own so a child whose stderr was redirected
    elsewhere does not prefix its lines for a journal it does not write to."""
    expected = environ.get("JOURNAL_STREAM", "")
    try:
        stat = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # no real file behind the stream
        return False
    return expected == f"{stat.st_dev}:{stat.st_ino}"


class _RequestIdFilter(logging.Filter):
    """Copies the current request id onto the record (an access line brings its own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = _request_id.get()
        return True


class _UnparseableRequestFilter(logging.Filter):
    """aiohttp logs every request it cannot parse (a port scanner, TLS spoken to the plain
    port, a broken client) at ERROR with a traceback. That is the client's error, not ours:
    it becomes one INFO line saying what was wrong, and is dropped below INFO."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self._level = level

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, BadHttpMessage):
            return True
        if self._level > logging.INFO:
            return False
        record.msg, record.args = "%s: %s", (record.getMessage(), " ".join(error.message.split()))
        record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        record.exc_info = record.exc_text = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (tracebacks included, escaped); with
    ``with_pid``, the ``pid`` of the process that logged it."""

    def __init__(self, *, with_pid: bool = False) -> None:
        super().__init__()
        self._with_pid = with_pid

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
        }
        if self._with_pid:
            entry["pid"] = record.process
        entry["logger"] = record.name
        entry["message"] = record.getMessage()
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class _JournalPrefix(logging.Formatter):
    """Prefixes ``<N>`` to what ``inner`` formats; a multi-line record (a traceback) becomes
    several journal entries, so every line gets the prefix to keep its priority."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        priority = _SYSLOG_PRIORITY.get(record.levelno)
        if priority is None:  # a custom level: the nearest standard one below it
            priority = next((p for lvl, p in _SYSLOG_PRIORITY.items() if record.levelno >= lvl), 7)
        prefix = f"<{priority}>"
        return "\n".join(prefix + line for line in self._inner.format(record).splitlines())


def make_formatter(log_format: str, *, journal: bool, with_pid: bool = False) -> logging.Formatter:
    inner = (
        JsonFormatter(with_pid=with_pid)
        if log_format == "json"
        else logging.Formatter(_text_format(journal=journal, with_pid=with_pid))
    )
    return _JournalPrefix(inner) if journal else inner


def configure_logging(
    *,
    level: str,
    log_format: str,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
    with_pid: bool = False,
) -> None:
    """Send every logger's records at ``level`` or above to ``stream`` (stderr) in
    ``log_format`` ("text" or "json"), journal-aware, each naming the process that logged it
    when ``with_pid`` (set it before forking workers). Replaces handlers set up before."""
    stream = sys.stderr if stream is None else stream
    environ = os.environ if environ is None else environ
    journal = is_journal_stream(stream, environ)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(make_formatter(log_format, journal=journal, with_pid=with_pid))
    handler.addFilter(_RequestIdFilter())
    handler.addFilter(_UnparseableRequestFilter(logging.getLevelName(level)))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
