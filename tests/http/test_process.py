"""The program as it runs in production: ``python -m clustr_aio`` with settings in the
environment, its log lines, its exit codes, and curl as the client."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.conftest import JPEG, PNG
from tests.server_process import (
    WAIT_SECONDS,
    RunningServer,
    free_port,
    server_env,
    start_server,
    wait_until,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with start_server(directory=tmp_path_factory.mktemp("process")) as server:
        yield server


def get(server: RunningServer, path: str, request_id: str) -> int:
    request = urllib.request.Request(server.url + path, headers={"X-Request-ID": request_id})
    try:
        with urllib.request.urlopen(request, timeout=WAIT_SECONDS) as response:
            status: int = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    return status


def lines_with(server: RunningServer, text: str) -> list[str]:
    return [line for line in server.logs.splitlines() if text in line]


def log_lines_with(server: RunningServer, text: str, count: int) -> list[str]:
    """Wait for ``count`` log lines containing ``text`` (log writes may trail the response)."""
    wait_until(
        lambda: len(lines_with(server, text)) >= count,
        lambda: f"{text!r} x{count} in:\n{server.logs}",
    )
    return lines_with(server, text)


def test_start_up_line_says_where_it_listens_and_where_files_go(server: RunningServer) -> None:
    [line] = log_lines_with(server, "listening on", 1)
    assert f"http://127.0.0.1:{server.port}" in line
    assert str(server.upload_folder) in line


def test_one_access_line_per_request_with_its_id(server: RunningServer) -> None:
    requests = {"proc-root-1": "/", "proc-root-2": "/", "proc-missing-3": "/nope"}
    statuses = {rid: get(server, path, rid) for rid, path in requests.items()}
    assert statuses == {"proc-root-1": 200, "proc-root-2": 200, "proc-missing-3": 404}
    for rid, path in requests.items():
        [line] = log_lines_with(server, rid, 1)
        assert f"GET {path}" in line
        assert str(statuses[rid]) in line
    time.sleep(0.2)  # had a second line been logged for any of them, it would be there by now
    for rid in requests:
        assert len(lines_with(server, rid)) == 1


def test_curl_uploads_two_files(server: RunningServer, tmp_path: Path) -> None:
    curl = shutil.which("curl")
    if curl is None:
        if os.environ.get("CI") == "true":
            pytest.fail("curl is missing: .ci/system-deps installs it")
        pytest.skip("curl is not installed (make system-deps)")
    (tmp_path / "a.jpg").write_bytes(JPEG)
    (tmp_path / "b.png").write_bytes(PNG)
    result = subprocess.run(
        [
            curl,
            "--silent",
            "--show-error",
            "--fail-with-body",
            "-F",
            "files=@a.jpg",
            "-F",
            "files=@b.png",
            "-F",
            "files=@a.jpg;filename=../../../curl evil.jpg",
            f"{server.url}/api/upload",
        ],
        cwd=tmp_path,
        capture_output=True,
        timeout=WAIT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    payload = json.loads(result.stdout)
    assert payload["message"] == "Successfully uploaded 3 files"
    names = [item["stored_filename"] for item in payload["data"]]
    assert [item["content_type"] for item in payload["data"]] == [
        "image/jpeg",
        "image/png",
        "image/jpeg",
    ]
    assert names[2] == "curl evil.jpg"
    folder = server.upload_folder
    for name, data in zip(names, (JPEG, PNG, JPEG), strict=True):
        assert (folder / name).read_bytes() == data
    # …and curl fetches them back from the preview URL.
    fetched = subprocess.run(
        [curl, "--silent", "--fail", payload["data"][1]["preview_url"]],
        capture_output=True,
        timeout=WAIT_SECONDS,
        check=False,
    )
    assert fetched.returncode == 0
    assert fetched.stdout == PNG


def start_up_error(
    env: dict[str, str],
    cwd: Path,
    *,
    status: int,
    python_args: Sequence[str] = ("-m", "clustr_aio"),
) -> str:
    """The one line ``python -m clustr_aio`` prints when it cannot start, after ``clustr-aio:
    error:``; it must exit with ``status``, without a traceback or anything else."""
    result = subprocess.run(
        [sys.executable, *python_args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS,
        check=False,
    )
    assert result.returncode == status, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("clustr-aio: error: ")
    return lines[0].removeprefix("clustr-aio: error: ")


def test_a_bad_setting_is_one_clear_line_and_a_failure_exit(tmp_path: Path) -> None:
    env = server_env(tmp_path / "uploads", free_port(), PORT="abc")
    assert start_up_error(env, tmp_path, status=2) == (
        "PORT: expected an integer from 1 to 65535, got 'abc' (from environment)"
    )


def test_a_misspelt_name_in_dotenv_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PORT=5001\nMAX_FILESIZE=1\n")
    env = server_env(tmp_path / "uploads", free_port())
    del env["ENV_FILE"]  # the .env in the working directory, as a user has it
    assert start_up_error(env, tmp_path, status=2) == (
        f"MAX_FILESIZE: unknown setting in {tmp_path / '.env'} (did you mean MAX_FILE_SIZE?)"
    )


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("{tmp}/a-file", "UPLOAD_FOLDER: '{tmp}/a-file' is not a directory"),
        ("/proc/clustr-aio-test", "UPLOAD_FOLDER: cannot create '/proc/clustr-aio-test': "),
        ("/sys", "UPLOAD_FOLDER: cannot write to '/sys': "),  # sysfs refuses files, even root's
    ],
)
def test_an_unusable_upload_folder_is_one_clear_line(
    tmp_path: Path, folder: str, expected: str
) -> None:
    (tmp_path / "a-file").touch()
    folder = folder.format(tmp=tmp_path)
    # Two workers: checked once, before they start, not a traceback from each.
    env = server_env(tmp_path / "uploads", free_port(), UPLOAD_FOLDER=folder, WORKERS="2")
    assert start_up_error(env, tmp_path, status=1).startswith(expected.format(tmp=tmp_path))


def test_missing_docs_assets_are_one_clear_line(tmp_path: Path) -> None:
    # The real entry point, in an interpreter where the package cannot be found.
    hide_sidecar = (
        "import sys; sys.modules['drf_spectacular_sidecar'] = None\n"
        "from clustr_aio.__main__ import main; sys.exit(main())"
    )
    env = server_env(tmp_path / "uploads", free_port())
    error = start_up_error(env, tmp_path, status=1, python_args=("-c", hide_sidecar))
    assert error.startswith("the drf_spectacular_sidecar package (PyPI: drf-spectacular-sidecar)")
    assert error.endswith(": pip install --no-deps -r requirements-assets.txt")


def test_an_address_that_cannot_be_bound_is_one_clear_line(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        env = server_env(tmp_path / "uploads", port)
        assert start_up_error(env, tmp_path, status=1) == (
            f"HOST, PORT: cannot listen on 127.0.0.1:{port}: Address already in use"
        )
    env = server_env(tmp_path / "uploads", port, HOST="clustr-aio-test.invalid")
    assert start_up_error(env, tmp_path, status=1).startswith(
        "HOST: cannot resolve 'clustr-aio-test.invalid': "
    )


def test_sigterm_is_a_clean_exit(tmp_path: Path) -> None:
    with start_server(directory=tmp_path) as server:
        assert get(server, "/", "before-sigterm") == 200
        assert server.stop() == 0
        log = server.logs
    assert "Traceback" not in log
    assert "ERROR" not in log
