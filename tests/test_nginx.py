"""deploy/nginx.conf in front of a real ``python -m clustr_aio``, both on free ports.

The site file is used as shipped, with only its host-specific values (listen address, the
upstream's port, the upload folder) replaced; nginx runs from a private prefix (its config, pid,
logs and temp paths under tmp_path), so it touches nothing in /etc or /var. Requests go through
nginx with curl, under a host name of their own, so that preview_url can only have come from
the forwarded headers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import JPEG, REPO
from tests.server_process import RunningServer, free_port, start_server

SITE = REPO / "deploy" / "nginx.conf"
HOST = "photos.test"
BUFFERED_WARNING = "a client request body is buffered to a temporary file"
BIG = JPEG + bytes(range(256)) * (3 * 4096)  # 3 MiB: over nginx's default 1m body limit
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

pytestmark = pytest.mark.skipif(
    not os.path.exists(NGINX) and os.environ.get("CI") != "true",
    reason="nginx is not installed (make system-deps installs it)",
)


def render_site(*, port: int, upstream_port: int, upload_folder: Path, buffering: bool) -> str:
    """The shipped site file with this test's addresses and paths; each replaced line must be
    there exactly once, so a change to the file cannot silently bypass the test."""
    site = SITE.read_text()
    replacements = {
        "    listen 80;\n": f"    listen 127.0.0.1:{port};\n",
        "    listen [::]:80;\n": "",
        "    server 127.0.0.1:5000;\n": f"    server 127.0.0.1:{upstream_port};\n",
        "    alias /var/lib/clustr-aio/uploads/;\n": f"    alias {upload_folder}/;\n",
    }
    if buffering:  # the control run: nginx's default
        replacements["    proxy_request_buffering off;\n"] = "    proxy_request_buffering on;\n"
    for old, new in replacements.items():
        assert site.count(old) == 1, f"{old.strip()!r} is not in {SITE} exactly once"
        site = site.replace(old, new)
    return site


def render_main(prefix: Path, site: Path) -> str:
    # Workers run as nobody unless told otherwise, and could not read pytest's 0700 tmp dirs.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp_paths = "".join(
        f"    {kind}_temp_path {prefix}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}worker_processes 1;\npid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log info;\n"  # the buffering warning is logged at [warn]
        "events { worker_connections 64; }\n"
        f"http {{\n    access_log {prefix}/access.log;\n{temp_paths}    include {site};\n}}\n"
    )


@contextmanager
def running_nginx(prefix: Path, site_text: str, port: int) -> Iterator[Path]:
    """nginx in the foreground from ``prefix``; yields its error log."""
    prefix.mkdir(parents=True)
    (prefix / "site.conf").write_text(site_text)
    conf = prefix / "nginx.conf"
    conf.write_text(render_main(prefix, prefix / "site.conf"))
    error_log = prefix / "error.log"
    command = [NGINX, "-p", str(prefix), "-e", str(error_log), "-c", str(conf)]
    tested = subprocess.run([*command, "-t"], capture_output=True, text=True, check=False)
    assert tested.returncode == 0, tested.stderr
    process = subprocess.Popen([*command, "-g", "daemon off;"], stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while curl(port, "/healthz").returncode != 0:
            assert process.poll() is None, error_log.read_text()
            assert time.monotonic() < deadline, "nginx did not answer"
            time.sleep(0.05)
        yield error_log
    finally:
        process.terminate()
        process.wait(30)


def curl(port: int, path: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """curl through nginx as a client of http://photos.test:<port> would."""
    return subprocess.run(
        [
            *("curl", "--silent", "--show-error", "--fail-with-body", "--max-time", "60"),
            *("--resolve", f"{HOST}:{port}:127.0.0.1", *args, f"http://{HOST}:{port}{path}"),
        ],
        capture_output=True,
        check=False,
    )


def headers_and_body(result: subprocess.CompletedProcess[bytes]) -> tuple[str, bytes]:
    """Split ``curl --include`` output (after any interim 100 Continue)."""
    head, _, body = result.stdout.rpartition(b"\r\n\r\n")
    head = head.split(b"\r\n\r\n")[-1]
    return head.decode("latin-1").lower(), body


@contextmanager
def stack(tmp_path: Path, *, buffering: bool = False) -> Iterator[tuple[RunningServer, int, Path]]:
    """The server and nginx in front of it: (server, nginx's port, nginx's error log)."""
    folder = tmp_path / "uploads"
    with start_server({"UPLOAD_FOLDER": str(folder)}, directory=tmp_path / "server") as server:
        port = free_port()
        site = render_site(
            port=port, upstream_port=server.port, upload_folder=folder, buffering=buffering
        )
        with running_nginx(tmp_path / "nginx", site, port) as error_log:
            yield server, port, error_log


def test_upload_through_nginx_streams_and_files_are_served_by_nginx(tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    big.write_bytes(BIG)
    with stack(tmp_path) as (server, port, error_log):
        # 3 MiB through nginx (default limit 1m), once with a length, once chunked.
        for extra in ((), ("--header", "Transfer-Encoding: chunked")):
            result = curl(port, "/api/upload", "--form", f"files=@{big}", *extra)
            assert result.returncode == 0, result.stdout + result.stderr
            item = json.loads(result.stdout)["data"][0]
            # The host and port the client used, from nginx's X-Forwarded-Host.
            assert item["preview_url"] == f"http://{HOST}:{port}/uploads/{item['stored_filename']}"
            assert item["file_size"] == len(BIG)
        # nginx passed the bodies on as they came: nothing went to its temporary files.
        assert BUFFERED_WARNING not in error_log.read_text()
        assert not any((tmp_path / "nginx" / "client_body").iterdir())

        fetched = curl(port, "/uploads/big.jpg", "--include")
        assert fetched.returncode == 0
        head, body = headers_and_body(fetched)
        assert body == BIG
        assert "content-type: image/jpeg" in head
        assert "x-content-type-options: nosniff" in head
        assert "content-security-policy: default-src 'none'; sandbox" in head
        assert "content-disposition" not in head

        # A type the server does not check (an operator widened ALLOWED_EXTENSIONS): a download.
        ((tmp_path / "uploads") / "page.html").write_bytes(b"<script>alert(1)</script>")
        head, _ = headers_and_body(curl(port, "/uploads/page.html", "--include"))
        assert "content-type: application/octet-stream" in head
        assert "content-disposition: attachment" in head
        assert "content-security-policy: default-src 'none'; sandbox" in head
        ((tmp_path / "uploads") / "sub").mkdir()
        ((tmp_path / "uploads") / "sub" / "inner.jpg").write_bytes(BIG[:100])
        os.symlink(big, (tmp_path / "uploads") / "link.jpg")

        hidden_paths = ("/uploads/.incoming/", "/uploads/.incoming", "/uploads/%2eincoming/")
        for hidden in (
            *hidden_paths,
            "/uploads/sub/inner.jpg",
            "/uploads/sub/",
            "/uploads/link.jpg",
        ):
            refused = curl(port, hidden, "--include")
            head, body = headers_and_body(refused)
            assert head.startswith("http/1.1 404"), (hidden, head)
            assert json.loads(body) == {"detail": "Not Found"}
        listing = curl(port, "/uploads/", "--include")
        assert headers_and_body(listing)[0].startswith("http/1.1 404")

        assert curl(port, "/metrics").returncode == 0  # from this host: allowed
        assert server.stop() == 0
        # With the server gone, nginx still serves the files: they never went through Python.
        assert curl(port, "/uploads/big-1.jpg").stdout == BIG


def test_control_with_buffering_on_the_warning_does_appear(tmp_path: Path) -> None:
    """Proof that the check above can fail: nginx's default buffering logs the warning."""
    big = tmp_path / "big.jpg"
    big.write_bytes(BIG)
    with stack(tmp_path, buffering=True) as (_, port, error_log):
        result = curl(port, "/api/upload", "--form", f"files=@{big}")
        assert result.returncode == 0, result.stdout + result.stderr
        assert BUFFERED_WARNING in error_log.read_text()
