"""tuspy, the tus project's Python client (PyPI), against a real server process: 64 MB in 5 MB
chunks, the server killed with SIGKILL in the middle and started again, the client resuming from
the URL it stored; the stored file is byte-identical and catalogued."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import requests
from tusclient.client import TusClient
from tusclient.exceptions import TusCommunicationError, TusUploadFailed
from tusclient.storage.filestorage import FileStorage

from tests.server_process import WAIT_SECONDS, start_server
from tests.tus.media import write_png

MB = 1000 * 1000
SIZE = 64 * MB
CHUNK = 5 * 1024 * 1024
SETTINGS = {"FSYNC": "true", "MAX_FILE_SIZE": "100MiB", "ACCESS_LOG": "false"}


def test_tuspy_resumes_after_the_server_was_killed(tmp_path: Path) -> None:
    photo = write_png(tmp_path / "big.png", SIZE)
    urls = FileStorage(str(tmp_path / "tus-urls.json"))
    first = start_server(SETTINGS, directory=tmp_path / "run")
    endpoint = f"{first.url}/api/tus/"
    with first:
        client = TusClient(endpoint)
        uploader = client.uploader(
            str(photo), chunk_size=CHUNK, metadata={"filename": "big.png"},
            store_url=True, url_storage=urls,
        )  # fmt: skip
        failure: list[BaseException] = []

        def upload() -> None:
            try:
                uploader.upload()
            except (TusCommunicationError, TusUploadFailed, requests.RequestException) as error:
                failure.append(error)

        thread = threading.Thread(target=upload)
        thread.start()
        deadline = time.monotonic() + WAIT_SECONDS
        while uploader.offset < 4 * CHUNK and time.monotonic() < deadline:
            time.sleep(0.005)
        confirmed = uploader.offset  # answered by a PATCH: must survive what follows
        first.kill()  # SIGKILL, most likely in the middle of the next chunk
        thread.join(WAIT_SECONDS)
        assert failure, "the upload should have broken off with the server"
        assert 0 < confirmed < SIZE

    # The same port: the URL the client stored names it.
    again = {**SETTINGS, "PORT": str(first.port)}
    with start_server(again, directory=tmp_path / "run") as second:
        with photo.open("rb") as stream:
            url = urls.get_item(uploader.fingerprinter.get_fingerprint(stream))
        assert url is not None
        offset = int(
            requests.head(url, headers={"Tus-Resumable": "1.0.0"}, timeout=30).headers[
                "Upload-Offset"
            ]
        )
        assert offset >= confirmed  # durable
        resumed = TusClient(endpoint).uploader(
            str(photo), chunk_size=CHUNK, metadata={"filename": "big.png"},
            store_url=True, url_storage=urls,
        )  # fmt: skip
        assert resumed.url == url
        assert resumed.offset == offset
        resumed.upload()

        assert (second.upload_folder / "big.png").read_bytes() == photo.read_bytes()
        state = requests.head(url, headers={"Tus-Resumable": "1.0.0"}, timeout=30)
        record = requests.get(state.headers["Clustr-File-Url"], timeout=30).json()
        assert record["sha256"] == hashlib.sha256(photo.read_bytes()).hexdigest()
        assert record["file_size"] == SIZE
