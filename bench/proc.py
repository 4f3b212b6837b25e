"""Processes under test: free ports, readiness, and peak memory from /proc.

Peak RSS is the kernel's own high-water mark, ``VmHWM`` in ``/proc/PID/status``; writing ``5`` to
``/proc/PID/clear_refs`` resets it to the current RSS (Linux ≥ 4.0), so every scenario gets its own
peak from the same long-running server, without polling and without missing short spikes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Final

MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_http(
    url: str,
    process: subprocess.Popen[bytes],
    *,
    accept: Iterable[int] = (200,),
    timeout: float = 60.0,
) -> None:
    """Poll ``url`` until it answers one of ``accept``; fail early if ``process`` exits."""
    wanted = set(accept)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode} at start-up")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status in wanted:
                    return
        except urllib.error.HTTPError as error:
            if error.code in wanted:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def stop_process(process: subprocess.Popen[bytes], *, timeout: float = 60.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (pre-forked workers), by their parent links in /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # the process ended meanwhile
        # The command name (field 2) may hold spaces and parentheses: split after the last ")".
        fields = text[text.rindex(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def reset_peak_rss(pids: Iterable[int]) -> bool:
    """Reset each process's RSS high-water mark; False if the kernel did not let us."""
    ok = True
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok


def peak_rss(pids: Iterable[int]) -> list[int]:
    """Each process's RSS high-water mark in bytes (since start or the last reset)."""
    peaks = []
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) * 1024)
    return peaks


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


CORES: Final = os.cpu_count() or 1


def machine_idle_seconds() -> float:
    """Core-seconds the whole machine has spent idle (or waiting for I/O) since boot: the room
    that work on another core could have used (``/proc/stat``'s first line)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(fields[4]) + int(fields[5])) / _CLOCK_TICKS  # idle, iowait


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time the processes (all their threads) have used so far."""
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / _CLOCK_TICKS
