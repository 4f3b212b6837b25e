"""Log output of the real program (``python -m clustr_aio`` in a subprocess): JSON lines,
journald-style lines, and the request id on every record logged for a request."""

from __future__ import annotations

import json
import logging
import re
import socket
import sys
import urllib.request
from io import StringIO
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from clustr_aio.observability.logs import JsonFormatter, configure_logging
from tests.conftest import JPEG
from tests.server_process import WAIT_SECONDS, RunningServer, start_server, wait_until

TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}")


def get(server: RunningServer, path: str, request_id: str) -> None:
    request = urllib.request.Request(server.url + path, headers={"X-Request-ID": request_id})
    with urllib.request.urlopen(request, timeout=WAIT_SECONDS) as response:
        assert response.status == 200


def abandon_upload(server: RunningServer, request_id: str) -> None:
    """Send the headers and a part of a multipart body, then hang up."""
    head = (
        "POST /api/upload HTTP/1.1\r\nHost: test\r\n"
        f"X-Request-ID: {request_id}\r\nContent-Length: 100000\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n\r\n"
    ).encode()
    part = b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.jpg"\r\n\r\n'
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_SECONDS) as sock:
        sock.sendall(head + part + JPEG)
        # Hang up only once the handler is reading the body, not before it started.
        wait_until(lambda: uploads_in_flight(server) == 1, "the upload to start")


def uploads_in_flight(server: RunningServer) -> float:
    with urllib.request.urlopen(server.url + "/metrics?name[]=clustr_uploads_in_flight") as page:
        families = text_string_to_metric_families(page.read().decode())
        return next(family.samples[0].value for family in families)


def test_json_lines_carry_level_logger_and_request_id(tmp_path: Path) -> None:
    with start_server({"LOG_FORMAT": "json"}, directory=tmp_path) as server:
        get(server, "/", "rid-hello")
        abandon_upload(server, "rid-gone")
        server.wait_for_log("client disconnected")
        server.wait_for_log("rid-gone")
        assert server.stop() == 0
    lines = server.logs.splitlines()
    records = [json.loads(line) for line in lines]  # every line, start-up and shutdown included
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys()
        assert TIMESTAMP.match(record["time"])
    access = [r for r in records if r["logger"] == "clustr_aio.access"]
    hello = next(r for r in access if '"GET /" 200' in r["message"] and "rid-hello" in r["message"])
    assert hello["request_id"] == "rid-hello"
    assert hello["level"] == "INFO"
    # Logged by the error middleware, not by the access logger: the id came through the context.
    gone = next(r for r in records if "client disconnected" in r["message"])
    assert gone["logger"] == "clustr_aio"
    assert gone["request_id"] == "rid-gone"
    # Records outside any request have no id at all.
    listening = next(r for r in records if "listening on" in r["message"])
    assert "request_id" not in listening


def test_under_journald_lines_have_priority_prefix_and_no_timestamp(tmp_path: Path) -> None:
    with start_server(directory=tmp_path, journal=True) as server:
        get(server, "/", "rid-journal")
        server.wait_for_log("rid-journal")
        assert server.stop() == 0
    lines = server.logs.splitlines()
    assert lines
    for line in lines:
        assert re.match(r"<[0-7]>", line), line
        assert not TIMESTAMP.search(line), line
    assert any(line.startswith("<6>INFO clustr_aio: clustr_aio listening on") for line in lines)
    assert any(line.startswith("<6>") and "id=rid-journal" in line for line in lines)


def test_journal_stream_of_another_file_is_ignored(tmp_path: Path) -> None:
    """A process whose stderr was redirected away from the journal keeps ordinary lines even
    though it inherited JOURNAL_STREAM."""
    with start_server({"JOURNAL_STREAM": "1:2"}, directory=tmp_path) as server:
        assert server.stop() == 0
    lines = server.logs.splitlines()
    assert lines
    for line in lines:
        assert TIMESTAMP.match(line), line


def test_json_record_with_exception_and_prefix_on_every_line() -> None:
    """A traceback stays inside its JSON line; under the journal each line keeps a priority."""
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("clustr_aio", logging.ERROR, __file__, 1, "failed", None, exc_info)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "ERROR"
    assert entry["message"] == "failed"
    assert "Traceback" in entry["exception"]
    assert "ValueError: boom" in entry["exception"]


def test_journal_text_prefixes_every_line_of_a_traceback(tmp_path: Path) -> None:
    stream_path = tmp_path / "stderr"
    with stream_path.open("w") as stream:
        stat = stream_path.stat()
        configure_logging(
            level="INFO",
            log_format="text",
            stream=stream,
            environ={"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"},
        )
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("clustr_aio.test").exception("failed")
        logging.getLogger("clustr_aio.test").warning("careful")
    configure_logging(level="INFO", log_format="text", stream=StringIO(), environ={})
    lines = stream_path.read_text().splitlines()
    assert lines[0] == "<3>ERROR clustr_aio.test: failed"
    assert len(lines) > 3
    assert all(line.startswith("<3>") for line in lines[:-1])
    assert lines[-1] == "<4>WARNING clustr_aio.test: careful"


def test_an_unparseable_request_is_one_info_line_without_a_traceback(tmp_path: Path) -> None:
    """aiohttp logs a request it cannot parse at ERROR with a traceback; scanners and TLS
    spoken to the plain port would fill the journal with them."""
    with start_server({}, directory=tmp_path) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_SECONDS) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
            assert sock.recv(100).split(b" ")[1] == b"400"
        server.wait_for_log("Invalid header token")
        assert server.stop() == 0
    [line] = [line for line in server.logs.splitlines() if "Invalid header token" in line]
    assert " INFO clustr_aio: bad request from 127.0.0.1: 400, Invalid header token" in line
    assert "Traceback" not in server.logs
    assert " ERROR " not in server.logs
