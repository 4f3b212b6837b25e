"""tus-js-client (npm, pinned by tests/tus/js/package-lock.json) in Node against a real server:
upload with non-Latin UTF-8 metadata, abort and resume, parallelUploads: 4 (concatenation),
checksums on every chunk and a wrong one (460), termination then 404 — the end-to-end
expectations of tus-js-client's own suite — and its IETF draft interop (``ietf-draft-05``)."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

from tests.http.live_server import AiohttpServer, start_live_server
from tests.tus.media import png_bytes
from tests.tus.node import JS, node


def metadata(header: str) -> dict[str, str]:
    pairs = (pair.split(" ") for pair in header.split(","))
    return {key: base64.b64decode(value).decode() for key, value in pairs}


async def test_tus_js_client(
    aiohttp_server: AiohttpServer, upload_dir: Path, tmp_path: Path
) -> None:
    server = await start_live_server(aiohttp_server, upload_dir, fsync=False)
    photo, other = png_bytes(1_500_000), png_bytes(3_000_000)
    (tmp_path / "photo.png").write_bytes(photo)
    (tmp_path / "other.png").write_bytes(other)
    process = await asyncio.create_subprocess_exec(
        node(), str(JS / "tus_client.mjs"), str(server.make_url("/api/tus/")),
        str(tmp_path / "photo.png"), str(tmp_path / "other.png"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    results: dict[str, Any] = json.loads(out)

    plain = results["plain"]["head"]
    assert plain["status"] == 200
    assert plain["headers"]["upload-offset"] == str(len(photo))
    assert metadata(plain["headers"]["upload-metadata"]) == {
        "filename": "фото-日本.png",
        "caption": "Ελληνικά 😀",
    }
    assert (upload_dir / "фото-日本.png").read_bytes() == photo
    assert "clustr-file-id" in plain["headers"]

    resume = results["resume"]
    assert 0 < resume["abortedAt"] < len(other)
    assert resume["progress"][0][0] >= resume["abortedAt"]  # resumed, not sent again
    assert resume["head"]["headers"]["upload-offset"] == str(len(other))
    assert (upload_dir / "resumed.png").read_bytes() == other

    parallel = results["parallel"]["head"]
    assert parallel["headers"]["upload-concat"].startswith("final;")
    assert parallel["headers"]["upload-concat"].count("/api/tus/") == 4
    assert (upload_dir / "parallel.png").read_bytes() == other

    assert results["checksum"]["head"]["headers"]["upload-offset"] == str(len(photo))
    assert (upload_dir / "summed.png").read_bytes() == photo
    assert results["badChecksum"] == {"status": 460}
    assert not (upload_dir / "corrupt.png").exists()

    assert results["terminated"]["head"]["status"] == 404
    assert not (upload_dir / "doomed.png").exists()

    ietf = results["ietf"]["head"]  # protocol: 'ietf-draft-05', 256 KiB chunks
    assert ietf["status"] == 200
    assert ietf["headers"]["upload-complete"] == "?1"
    assert ietf["headers"]["upload-offset"] == str(len(other))
    assert "clustr-file-id" in ietf["headers"]
    assert (upload_dir / "ietf.png").read_bytes() == other
