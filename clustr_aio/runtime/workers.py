"""``WORKERS`` > 1: a pre-fork supervisor and the workers it keeps running.

The supervisor holds the listening sockets (bound by it, or passed by systemd) and forks the
workers, which all serve those same sockets: the kernel hands each new connection to whichever
worker accepts first, i.e. to one that is not busy. A connection waiting in the shared queue
survives the death of any one worker (with ``SO_REUSEPORT``, each worker would own a queue, and
the connections queued on a dying worker's socket would be reset).

The supervisor runs no event loop (forking one is unsafe); it waits on a pipe per worker, on
which the worker writes ``R`` once it serves and ``W`` every heartbeat, and on signals:

- it reports ``READY=1`` to systemd once every worker has written ``R``;
- it replaces a worker that dies, and kills and replaces one whose heartbeats stop (its event
  loop hangs) for longer than systemd's watchdog timeout, while it pings systemd's watchdog
  itself;
- a worker that dies before it ever served is a start-up failure (a port or folder problem
  that a new worker would hit again): the supervisor stops the others and exits 1;
- on SIGTERM or SIGINT it closes its copies of the listening sockets, forwards SIGTERM so
  that every worker drains, waits for them, and exits 0 if they all exited 0.

What the supervisor imported before forking, its workers share, page for page, as long as
neither writes to it: the supervisor freezes its objects (``gc.freeze``) before the first
fork, so that a worker's garbage collector never writes into the pages of the objects it
inherited (it leaves frozen objects alone). Without it, a ``STORAGE=s3`` worker, whose import
of botocore runs the collector hundreds of times, shared 8.8 MiB with the supervisor instead
of 19.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, NoReturn

from clustr_aio.runtime.systemd import Notifier

__all__ = ["Supervisor", "WorkerNotifier"]

log = logging.getLogger("clustr_aio")

_READY: Final = b"R"
_HEARTBEAT: Final = b"W"
_HEARTBEAT_SECONDS: Final = 1.0
_KILL_GRACE_SECONDS: Final = 15.0
"""After SIGTERM, how much longer than the drain timeout workers get before SIGKILL."""
_STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


class WorkerNotifier:
    """A worker's :class:`~clustr_aio.runtime.systemd.Notifier`, reporting to the supervisor's
    pipe."""

    def __init__(self, fd: int, heartbeat: float) -> None:
        self._fd = fd
        self._heartbeat = heartbeat

    @property
    def watchdog_interval(self) -> float:
        return self._heartbeat

    def ready(self, status: str) -> None:
        self._write(_READY)

    def status(self, status: str) -> None:
        pass  # one status line for the service is the supervisor's to write

    def stopping(self, status: str) -> None:
        pass

    def watchdog(self) -> bool:
        return self._write(_HEARTBEAT)

    def _write(self, message: bytes) -> bool:
        try:
            os.write(self._fd, message)
        except BlockingIOError:
            pass  # the supervisor is slow to read; the next heartbeat will do
        except OSError:  # EPIPE: the supervisor is gone
            return False
        return True


@dataclass(slots=True)
class _Worker:
    number: int  # 1…N, kept by a replacement: "worker 2" in the logs stays a slot
    pid: int
    pipe: int  # read end of the worker's report pipe
    last_heartbeat: float
    ready: bool = False


class Supervisor:
    """Keeps ``workers`` processes running ``run_worker`` until SIGTERM or SIGINT."""

    def __init__(
        self,
        *,
        workers: int,
        listeners: Sequence[socket.socket],
        notifier: Notifier,
        run_worker: Callable[[WorkerNotifier], int],
        stop_timeout: float,
    ) -> None:
        self._count = workers
        self._listeners = list(listeners)
        self._notifier = notifier
        self._run_worker = run_worker
        self._stop_timeout = stop_timeout
        self._workers: dict[int, _Worker] = {}
        self._selector = selectors.DefaultSelector()
        self._wakeup_read = self._wakeup_write = -1
        self._all_ready = False
        self._stopping = False
        self._kill_at = float("inf")
        self._exit_status = 0
        interval = notifier.watchdog_interval
        self._watchdog_interval = interval
        # A worker silent for as long as systemd would wait for us is hung: replace it.
        self._hung_after = None if interval is None else 2 * interval
        self._heartbeat = _HEARTBEAT_SECONDS if interval is None else min(1.0, interval / 2)

    # -- the supervisor's loop ------------------------------------------------------------

    def run(self) -> int:
        """Supervise until every worker has stopped; the exit status."""
        self._install_signals()
        gc.freeze()  # see the module's docstring: what is inherited stays shared
        try:
            for number in range(1, self._count + 1):
                self._spawn(number)
            next_ping = time.monotonic() if self._watchdog_interval is not None else float("inf")
            while self._workers:
                now = time.monotonic()
                if self._watchdog_interval is not None and now >= next_ping:
                    self._notifier.watchdog()
                    next_ping = now + self._watchdog_interval
                self._kill_hung_workers(now)
                if now >= self._kill_at:
                    self._kill_all()
                timeout = min(next_ping - now, self._kill_at - now, _HEARTBEAT_SECONDS)
                for key, _ in self._selector.select(max(timeout, 0.0)):
                    if key.fd == self._wakeup_read:
                        self._handle_signals()
                    else:
                        self._read_reports(key.data)
                self._reap()
        finally:
            self._restore_signals()
            self._close_listeners()
            self._selector.close()
        log.info("supervisor: all workers stopped")
        return self._exit_status

    def _install_signals(self) -> None:
        # Signals only write their number to this pipe; the loop reads it (set_wakeup_fd).
        self._wakeup_read, self._wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wakeup_write)
        for sig in (*_STOP_SIGNALS, signal.SIGCHLD):
            signal.signal(sig, _note_signal)
        self._selector.register(self._wakeup_read, selectors.EVENT_READ)

    def _restore_signals(self) -> None:
        signal.set_wakeup_fd(-1)
        for sig in (*_STOP_SIGNALS, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        os.close(self._wakeup_read)
        os.close(self._wakeup_write)

    def _handle_signals(self) -> None:
        with contextlib.suppress(BlockingIOError):
            for number in os.read(self._wakeup_read, 512):
                if number in _STOP_SIGNALS:
                    self._stop(f"{signal.Signals(number).name} received")

    def _read_reports(self, worker: _Worker) -> None:
        try:
            data = os.read(worker.pipe, 512)
        except BlockingIOError:
            return
        if not data:  # the worker exited; _reap() tells how
            self._selector.unregister(worker.pipe)
            return
        worker.last_heartbeat = time.monotonic()
        if _READY in data and not worker.ready:
            worker.ready = True
            log.info("worker %d (pid %d) serving", worker.number, worker.pid)
            self._report_readiness()

    def _report_readiness(self) -> None:
        if self._stopping or not all(w.ready for w in self._workers.values()):
            return
        status = f"{len(self._workers)} workers serving"
        if not self._all_ready:
            self._all_ready = True
            self._notifier.ready(status)
        else:
            self._notifier.status(status)

    # -- workers --------------------------------------------------------------------------

    def _spawn(self, number: int) -> None:
        read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        sys.stderr.flush()
        # Until the child has dropped the supervisor's signal handlers, a stop signal sent to
        # it would run them (and be lost): hold stop signals back across the fork.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                os.close(read_end)
                self._become_worker(write_end, mask)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(write_end)
        worker = _Worker(number, pid, read_end, last_heartbeat=time.monotonic())
        self._workers[pid] = worker
        self._selector.register(read_end, selectors.EVENT_READ, worker)
        log.info("worker %d (pid %d) started", number, pid)

    def _become_worker(self, report_fd: int, signal_mask: set[int | signal.Signals]) -> NoReturn:
        """In the forked child: shed the supervisor's state, serve, exit."""
        status = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in (*_STOP_SIGNALS, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)  # asyncio installs its own for SIGTERM/INT
            # A stop that arrived since the fork is delivered now, and ends this worker.
            signal.pthread_sigmask(signal.SIG_SETMASK, signal_mask)
            self._selector.close()
            for fd in (
                self._wakeup_read,
                self._wakeup_write,
                *(w.pipe for w in self._workers.values()),
            ):
                os.close(fd)
            status = self._run_worker(WorkerNotifier(report_fd, self._heartbeat))
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException:
            log.exception("worker failed")
        finally:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)

    def _reap(self) -> None:
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self._workers.pop(pid, None)
            if worker is None:
                continue
            if worker.pipe in self._selector.get_map():
                self._read_reports(worker)  # a last "R" may be waiting
                with contextlib.suppress(KeyError):
                    self._selector.unregister(worker.pipe)
            os.close(worker.pipe)
            self._worker_exited(worker, os.waitstatus_to_exitcode(wait_status))

    def _worker_exited(self, worker: _Worker, code: int) -> None:
        how = (
            f"exited with status {code}" if code >= 0 else f"killed by {signal.Signals(-code).name}"
        )
        if self._stopping:
            log.info("worker %d (pid %d) %s", worker.number, worker.pid, how)
            # A replacement still starting up has no handler for the forwarded stop signal
            # yet and dies of it: with nothing to drain, that is a clean stop too.
            stopped_before_serving = not worker.ready and -code in _STOP_SIGNALS
            if code != 0 and not stopped_before_serving:
                self._exit_status = 1
        elif not worker.ready:
            log.error(
                "worker %d (pid %d) %s before it served; stopping", worker.number, worker.pid, how
            )
            self._exit_status = 1
            self._stop("a worker failed to start")
        else:
            log.warning("worker %d (pid %d) %s; starting a new one", worker.number, worker.pid, how)
            self._notifier.status(f"replacing worker {worker.number}")
            self._spawn(worker.number)

    def _kill_hung_workers(self, now: float) -> None:
        if self._hung_after is None or self._stopping:
            return
        for worker in self._workers.values():
            if worker.ready and now - worker.last_heartbeat > self._hung_after:
                log.error(
                    "worker %d (pid %d) sent no heartbeat for %.0fs; killing it",
                    worker.number,
                    worker.pid,
                    now - worker.last_heartbeat,
                )
                worker.last_heartbeat = now  # one SIGKILL is enough; _reap() replaces it
                os.kill(worker.pid, signal.SIGKILL)

    # -- stopping -------------------------------------------------------------------------

    def _stop(self, reason: str) -> None:
        if self._stopping:
            return
        self._stopping = True
        log.info("supervisor: %s; stopping %d worker(s)", reason, len(self._workers))
        self._notifier.stopping(f"stopping: draining {len(self._workers)} worker(s)")
        # Once the workers have closed theirs too, a new connection is refused at once.
        self._close_listeners()
        for worker in self._workers.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)
        self._kill_at = time.monotonic() + self._stop_timeout + _KILL_GRACE_SECONDS

    def _kill_all(self) -> None:
        for worker in self._workers.values():
            log.error(
                "worker %d (pid %d) did not stop in time; killing it", worker.number, worker.pid
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)
        self._exit_status = 1
        self._kill_at = float("inf")

    def _close_listeners(self) -> None:
        for sock in self._listeners:
            sock.close()
        self._listeners.clear()


def _note_signal(signum: int, frame: object) -> None:
    """The signal's number already went to the wakeup pipe; nothing else to do here."""
