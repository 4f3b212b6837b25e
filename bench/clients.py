"""The load generators: curl for one big request (timed by curl itself), wrk for many."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

LUA: Final = Path(__file__).resolve().parent / "lua"
WRK_THREADS: Final = 1  # one load thread: the machine has 2 cores and the server needs one


class BenchError(RuntimeError):
    """A request the benchmark made did not succeed: its numbers would mean nothing."""


def _curl(args: Sequence[str], *, expect: Sequence[int]) -> tuple[float, bytes]:
    with tempfile.NamedTemporaryFile() as body:
        done = subprocess.run(
            ["curl", "-sS", "-o", body.name, "-w", "%{http_code} %{time_total}", *args],
            capture_output=True,
            check=False,
        )
        answer = Path(body.name).read_bytes()
    status_text, _, seconds = done.stdout.decode().partition(" ")
    if done.returncode != 0 or int(status_text or 0) not in expect:
        raise BenchError(
            f"curl {' '.join(args[-1:])} -> exit {done.returncode}, HTTP {status_text}: "
            f"{done.stderr.decode().strip()} {answer[:300]!r}"
        )
    return float(seconds), answer


def post_files(url: str, files: Sequence[Path], *, field: str = "files") -> float:
    """Seconds curl takes to send ``files`` in one multipart POST (``-F``) and get a 200 whose
    envelope lists them all."""
    with tempfile.NamedTemporaryFile("w", suffix=".curlrc") as config:
        # A config file, not 500 -F arguments on the command line.
        config.writelines(f'form = "{field}=@{path}"\n' for path in files)
        config.flush()
        seconds, answer = _curl(["-K", config.name, url], expect=(200,))
    stored = len(json.loads(answer)["data"])
    if stored != len(files):
        raise BenchError(f"{url}: {stored} files stored of {len(files)} sent")
    return seconds


def put_file(url: str, file: Path) -> float:
    """Seconds curl takes to ``PUT`` ``file`` (``-T``, the raw bytes) and get a 201/204."""
    seconds, _ = _curl(["-T", str(file), url], expect=(201, 204))
    return seconds


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests_per_second: float
    requests: int
    bad_responses: int
    """Non-2xx/3xx answers (wrk's own count)."""
    socket_errors: int
    """Connect, read, write errors and timeouts."""


def wrk(
    url: str, *, connections: int, seconds: int, script: str | None = None, args: Sequence[str] = ()
) -> WrkResult:
    command = ["wrk", f"-t{WRK_THREADS}", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s"]
    if script is not None:
        command += ["-s", str(LUA / script)]
    command.append(url)
    if args:
        command += ["--", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return parse_wrk(done.stdout)


def parse_wrk(report: str) -> WrkResult:
    rate = re.search(r"Requests/sec:\s+([\d.]+)", report)
    total = re.search(r"(\d+) requests in", report)
    if rate is None or total is None:
        raise BenchError(f"unexpected wrk output:\n{report}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", report)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", report
    )
    return WrkResult(
        requests_per_second=float(rate[1]),
        requests=int(total[1]),
        bad_responses=int(bad[1]) if bad else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )
