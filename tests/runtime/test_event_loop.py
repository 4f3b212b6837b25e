"""``EVENT_LOOP``: which loop a real server process runs on, and what happens without uvloop."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import uvloop

from clustr_aio.runtime.event_loop import EventLoopChoice, loop_factory, loop_name
from tests.conftest import REPO
from tests.server_process import clean_env, start_server


@pytest.mark.parametrize(
    ("choice", "made"),
    [("auto", uvloop.Loop), ("uvloop", uvloop.Loop), ("asyncio", asyncio.SelectorEventLoop)],
)
def test_each_choice_makes_its_loop(choice: EventLoopChoice, made: type) -> None:
    loop = loop_factory(choice)()
    try:
        assert isinstance(loop, made)
        assert loop_name(loop) == ("asyncio" if choice == "asyncio" else "uvloop")
    finally:
        loop.close()


# A Python without uvloop: a None in sys.modules makes its import fail as a missing one does.
_WITHOUT_UVLOOP = "import sys; sys.modules['uvloop'] = None; "


def run_without_uvloop(
    code: str, cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_UVLOOP + code],
        cwd=cwd,
        env={**clean_env(), "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_auto_falls_back_to_asyncio_without_uvloop(tmp_path: Path) -> None:
    done = run_without_uvloop(
        "from clustr_aio.runtime.event_loop import loop_factory, loop_name;"
        "print(loop_name(loop_factory('auto')()))",
        tmp_path,
        {},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "asyncio"


def test_uvloop_asked_for_but_missing_is_a_one_line_start_up_error(tmp_path: Path) -> None:
    done = run_without_uvloop(
        "sys.argv = ['clustr-aio']; from clustr_aio.__main__ import main; sys.exit(main())",
        tmp_path,
        {"EVENT_LOOP": "uvloop"},
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "clustr-aio: error: EVENT_LOOP: uvloop is not installed (pip install uvloop), or set"
        " EVENT_LOOP=asyncio"
    )
    assert not (tmp_path / "uploads").exists() or not any((tmp_path / "uploads").iterdir())


@pytest.mark.parametrize("choice", ["auto", "asyncio"])
def test_a_server_serves_on_the_loop_it_was_told(tmp_path: Path, choice: str) -> None:
    with start_server({"EVENT_LOOP": choice}, directory=tmp_path) as server:
        (server.upload_folder / "a.jpg").write_bytes(b"\xff\xd8" + bytes(300_000))
        with socket_to(server.port) as sock:
            sock.sendall(b"GET /uploads/a.jpg HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = read_all(sock)
    expected = "asyncio" if choice == "asyncio" else "uvloop"
    assert f"({expected})" in server.logs
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(b"\r\n\r\n\xff\xd8" + bytes(300_000))


def socket_to(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_all(sock: socket.socket) -> bytes:
    answer = b""
    while chunk := sock.recv(1 << 20):
        answer += chunk
    return answer
