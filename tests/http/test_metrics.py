"""``GET /metrics``: Prometheus text from the official client, counted through the real stack,
with bounded labels, and summed across processes in multiprocess mode."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from clustr_aio.catalog.factory import SQLITE_FILE
from tests.conftest import JPEG, PNG, REPO, Client
from tests.http.conftest import MakeClient
from tests.http.helpers import (
    expect_error,
    files_body,
    multipart_headers,
    raw_request,
    request_head,
    upload,
    upload_ok,
)
from tests.server_process import start_server, wait_until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(client: Client) -> Samples:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    return parse(await response.text())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for sample_name, labels in samples if sample_name == name]


async def test_uploads_and_rejections_are_counted(make_client: MakeClient) -> None:
    client = await make_client()
    assert (await client.get("/")).status == 200
    stored = await upload_ok(client, ("a.jpg", JPEG), ("b.png", PNG))
    await expect_error(await upload(client, ("notes.txt", b"hello")), 415)
    await expect_error(await client.post("/api/upload", data=b"x"), 406)
    stored_url = f"/uploads/{stored[0]['stored_filename']}"
    fetched = await client.get(stored_url)
    assert fetched.status == 200
    etag = fetched.headers["ETag"]
    # Statuses decided only when a file response is sent (after every middleware) count too.
    assert (await client.get(stored_url, headers={"If-None-Match": etag})).status == 304

    samples = await scrape(client)
    requests = "clustr_http_requests_total"
    assert value(samples, requests, method="GET", route="/", status="200") == 1
    assert value(samples, requests, method="POST", route="/api/upload", status="200") == 1
    assert value(samples, requests, method="POST", route="/api/upload", status="415") == 1
    assert value(samples, requests, method="POST", route="/api/upload", status="406") == 1
    # A stored file is counted under its route's template, not under its own path.
    assert value(samples, requests, method="GET", route="/uploads/{filename}", status="200") == 1
    assert value(samples, requests, method="GET", route="/uploads/{filename}", status="304") == 1

    assert value(samples, "clustr_upload_stored_files_total") == 2
    assert value(samples, "clustr_upload_stored_bytes_total") == len(JPEG) + len(PNG)
    received = value(samples, "clustr_upload_received_bytes_total")
    assert received >= len(files_body(("a.jpg", JPEG), ("b.png", PNG)))
    rejections = "clustr_upload_rejections_total"
    assert value(samples, rejections, reason="unsupported_type") == 1
    assert value(samples, rejections, reason="no_files") == 1
    assert value(samples, "clustr_uploads_in_flight") == 0

    durations = "clustr_http_request_duration_seconds_count"
    assert value(samples, durations, method="POST", route="/api/upload") == 3
    assert value(samples, durations, method="GET", route="/") == 1


async def test_refused_before_the_body_is_counted_too(make_client: MakeClient) -> None:
    """An ``Expect: 100-continue`` refusal is answered before any middleware runs."""
    client = await make_client(max_request_size=1000)
    assert client.port is not None
    headers = {**multipart_headers(), "Content-Length": "5000", "Expect": "100-continue"}
    response = await raw_request(
        "127.0.0.1", client.port, request_head("POST", "/api/upload", headers, port=client.port)
    )
    assert response.status == 413
    samples = await scrape(client)
    requests = "clustr_http_requests_total"
    assert value(samples, requests, method="POST", route="/api/upload", status="413") == 1
    assert value(samples, "clustr_upload_rejections_total", reason="too_large") == 1


async def test_labels_stay_bounded_whatever_clients_send(make_client: MakeClient) -> None:
    client = await make_client()
    for n in range(20):
        assert (await client.get(f"/no/such/path/{n}")).status == 404
        assert (await client.get(f"/uploads/missing-{n}.jpg")).status == 404
    assert (await client.request("TRACE", "/")).status == 405
    samples = await scrape(client)
    labels = series(samples, "clustr_http_requests_total")
    assert {"method": "GET", "route": "unmatched", "status": "404"} in labels
    assert {"method": "GET", "route": "/uploads/{filename}", "status": "404"} in labels
    assert {"method": "other", "route": "unmatched", "status": "405"} in labels
    assert not any("no/such" in label["route"] or "missing" in label["route"] for label in labels)
    assert len(labels) <= 4  # the three above and, maybe, this very scrape


async def test_openmetrics_is_negotiated(make_client: MakeClient) -> None:
    client = await make_client()
    response = await client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.status == 200
    assert response.content_type == "application/openmetrics-text"
    assert (await response.text()).rstrip().endswith("# EOF")


def scrape_url(url: str) -> Samples:
    with urllib.request.urlopen(url + "/metrics", timeout=30) as response:
        return parse(response.read().decode())


def upload_to(url: str, name: str) -> None:
    body = files_body((name, JPEG))
    request = urllib.request.Request(
        url + "/api/upload", data=body, headers=multipart_headers(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


def test_processes_sharing_a_multiprocess_dir_report_their_sum(tmp_path: Path) -> None:
    """Two server processes, as WORKERS=2 runs them: a scrape of either shows both."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    folder = tmp_path / "uploads"
    with (
        start_server(env | {"UPLOAD_FOLDER": str(folder)}, directory=tmp_path / "one") as one,
        start_server(env | {"UPLOAD_FOLDER": str(folder)}, directory=tmp_path / "two") as two,
    ):
        upload_to(one.url, "a.jpg")
        upload_to(two.url, "b.jpg")
        upload_to(two.url, "c.jpg")
        for url in (one.url, two.url):
            samples = scrape_url(url)
            assert value(samples, "clustr_upload_stored_files_total") == 3
            requests = "clustr_http_requests_total"
            assert value(samples, requests, method="POST", route="/api/upload", status="200") == 3
        entries = sorted(e for e in os.listdir(folder) if not e.startswith(SQLITE_FILE))
        assert entries == [".incoming", "a.jpg", "b.jpg", "c.jpg"]


def test_workers_report_their_sum_and_forget_the_dead(tmp_path: Path) -> None:
    """WORKERS=2 without any PROMETHEUS_MULTIPROC_DIR: the supervisor sets one up. Every scrape,
    whichever worker answers it, sees all uploads; killed workers' uploads in flight vanish
    from the gauge, their counts stay."""
    with start_server(workers=2, directory=tmp_path) as server:
        wait_until(lambda: len(server.worker_pids()) == 2, "two workers")
        for n in range(6):
            upload_to(server.url, f"{n}.jpg")  # one connection each: spread over the workers
        for _ in range(6):
            samples = scrape_url(server.url)
            assert value(samples, "clustr_upload_stored_files_total") == 6
            assert not series(samples, "process_cpu_seconds_total")  # multiprocess mode

        # An upload in flight, then every worker killed: the supervisor starts new ones.
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as hanging:
            hanging.sendall(
                b"POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                + f"Content-Type: {multipart_headers()['Content-Type']}\r\n\r\n".encode()
            )
            wait_until(
                lambda: value(scrape_url(server.url), "clustr_uploads_in_flight") == 1,
                "the upload to be in flight",
            )
            old = server.worker_pids()
            for pid in old:
                os.kill(pid, signal.SIGKILL)
            wait_until(lambda: len(set(server.worker_pids()) - set(old)) == 2, "two new workers")
            # Both serving, not just forked: one still starting when stop() comes would end
            # with SIGTERM's status rather than 0.
            for pid in set(server.worker_pids()) - set(old):
                server.wait_for_worker_serving(pid)
        samples = scrape_url(server.url)
        assert value(samples, "clustr_uploads_in_flight") == 0
        assert value(samples, "clustr_upload_stored_files_total") == 6
        ours = [
            directory
            for directory in server.temp_dir.glob("clustr-aio-metrics-*")
            if any((directory / f"counter_{pid}.db").exists() for pid in old)
        ]
        assert len(ours) == 1
        assert server.stop() == 0
    assert not ours[0].exists()  # the supervisor removed its directory on the way out


SUPERVISOR = textwrap.dedent(
    """
    import os, sys
    import clustr_aio.web.app  # imports prometheus_client before the directory is prepared
    from prometheus_client import generate_latest
    from clustr_aio.observability import metrics

    directory = metrics.prepare_multiprocess_dir()
    children = []
    for files in (2, 3):
        pid = os.fork()
        if pid == 0:  # a worker
            worker = metrics.Metrics()
            worker.stored_files.inc(files)
            worker.uploads_in_flight.inc()  # dies mid-upload
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
        metrics.mark_worker_dead(pid)
    scraper = metrics.Metrics()
    sys.stdout.write(generate_latest(scraper._exposed).decode())
    metrics.remove_multiprocess_dir()
    sys.stdout.write("removed=%s" % (not directory.exists()))
    """
)


def test_supervisor_contract_prepare_fork_mark_dead_remove(tmp_path: Path) -> None:
    """What the WORKERS=N supervisor calls: forked workers count into files even though
    prometheus_client was imported before the directory existed; a dead worker's in-flight
    uploads stop counting; the directory is removed at the end."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [sys.executable, "-c", SUPERVISOR],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    text, _, removed = result.stdout.rpartition("removed=")
    samples = parse(text)
    assert value(samples, "clustr_upload_stored_files_total") == 5
    assert value(samples, "clustr_uploads_in_flight") == 0
    assert removed == "True"
