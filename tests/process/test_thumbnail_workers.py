"""Thumbnails with two worker processes sharing one cache: a hundred concurrent first requests,
spread over both, render once (an flock per thumbnail), as /metrics (summed across workers)
counts."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp

from tests.http.helpers import files_body, multipart_headers
from tests.images.photos import encode, picture
from tests.process.conftest import StartServer
from tests.server_process import WAIT_SECONDS


async def test_two_workers_render_a_thumbnail_once(
    server_factory: StartServer, tmp_path: Path
) -> None:
    server = server_factory(workers=2)
    photo = encode("jpg", picture((3000, 2000)))
    timeout = aiohttp.ClientTimeout(total=WAIT_SECONDS)
    # One connection per request (no pooling), so that both workers accept some of them.
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        async with session.post(
            f"{server.url}/api/upload",
            data=files_body(("p.jpg", photo)),
            headers=multipart_headers(),
        ) as response:
            [item] = (await response.json())["data"]
        url = f"{server.url}/api/files/{item['id']}/thumbnail"

        async def fetch() -> tuple[int, bytes, str]:
            async with session.get(url) as response:
                return response.status, await response.read(), response.headers["ETag"]

        answers = await asyncio.gather(*(fetch() for _ in range(100)))
        async with session.get(f"{server.url}/metrics") as response:
            metrics = await response.text()
        # Hot now in both workers, which answer it from the connection (kept alive, without
        # aiohttp's client's "Connection: close") with the bytes they keep in memory.
        async with aiohttp.ClientSession(timeout=timeout) as kept_alive:

            async def fetch_hot() -> tuple[int, bytes]:
                async with kept_alive.get(url) as response:
                    return response.status, await response.read()

            logged = len(server.logs)
            hot = await asyncio.gather(*(fetch_hot() for _ in range(50)))
            hot_logs = server.logs[logged:]
            # Deleted through one worker: the other, which answered it from its memory,
            # knows too (the host's thumbnail removals counter moved).
            async with session.delete(f"{server.url}/api/files/{item['id']}") as response:
                assert response.status == 204
            gone = await asyncio.gather(*(fetch_hot() for _ in range(50)))
            assert {status for status, _ in gone} == {404}
    assert set(hot) == {answers[0][:2]}
    assert {status for status, _, _ in answers} == {200}
    assert len({body for _, body, _ in answers}) == 1
    assert len({etag for _, _, etag in answers}) == 1
    assert re.search(r"^clustr_thumbnails_rendered_total 1\.0$", metrics, re.M), metrics
    # Both workers answered some of the first requests, and some after the delete.
    pattern = rf"\[pid (\d+)\][^\n]*GET /api/files/{item['id']}/thumbnail\" (\d+)"
    answered = set(re.findall(pattern, server.logs))
    workers = {str(pid) for pid in server.worker_pids()}
    assert {pid for pid, status in answered if status == "200"} == workers, server.logs[-2000:]
    hot_answered = set(re.findall(pattern, hot_logs))
    assert {pid for pid, status in hot_answered if status == "200"} == workers, hot_logs
    assert {pid for pid, status in answered if status == "404"} == workers, server.logs[-2000:]
