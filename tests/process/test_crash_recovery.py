"""kill -9 in the middle of an upload: nothing partial is ever published, and the next start
removes what the dead process left in UPLOAD_FOLDER/.incoming."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from tests.conftest import stored_files, temp_files
from tests.process.conftest import StartServer
from tests.process.slow_client import jpeg_bytes, upload_in_flight
from tests.server_process import WAIT_SECONDS

MiB = 1024 * 1024


def test_the_next_start_sweeps_what_a_killed_server_left(server_factory: StartServer) -> None:
    server = server_factory()
    upload = upload_in_flight(server.port, server.upload_folder, "partial.jpg", jpeg_bytes(3 * MiB))
    left_behind = temp_files(server.upload_folder)
    dead_dirs = list((server.upload_folder / ".incoming").iterdir())

    server.kill()  # SIGKILL: no cleanup code runs

    assert upload.outcome().error is not None
    assert stored_files(server.upload_folder) == []  # nothing partial is published…
    assert temp_files(server.upload_folder) == left_behind  # …but the temp file is still there

    restarted = server_factory({"UPLOAD_FOLDER": str(server.upload_folder)})
    assert temp_files(restarted.upload_folder) == []
    assert not any(d.exists() for d in dead_dirs)
    assert stored_files(restarted.upload_folder) == []
    with pytest.raises(urllib.error.HTTPError) as not_found:
        urllib.request.urlopen(f"{restarted.url}/uploads/partial.jpg", timeout=WAIT_SECONDS)
    assert not_found.value.code == 404
