"""A resumable upload's stored file made of its data file (clustr_aio.ingest.in_place), through
a real server: left as sent it is the data file itself (its inode, no byte written again);
changed by the checks, it is byte for byte what a multipart upload of the same bytes stores."""

from __future__ import annotations

import base64
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData
from yarl import URL

from clustr_aio.storage.local_resumable import TUS_DIR
from clustr_aio.web.app import create_app
from tests.conftest import JPEG, AiohttpClient, Client, make_settings, stored_files, temp_files
from tests.images.photos import encode, exif_bytes, picture, png_chunk

MakeClient = Callable[..., Awaitable[Client]]
TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture
def make_client(aiohttp_client: AiohttpClient, upload_dir: Path) -> MakeClient:
    async def make(**overrides: Any) -> Client:
        return await aiohttp_client(create_app(make_settings(upload_dir, **overrides)))

    return make


async def tus_upload(
    client: Client, folder: Path, name: str, data: bytes, *, chunk: int
) -> tuple[str, int]:
    """``data`` by tus in PATCHes of ``chunk`` bytes: the stored file's name, and the inode
    its data file had before the last PATCH."""
    metadata = f"filename {base64.b64encode(name.encode()).decode()}"
    created = await client.post(
        "/api/tus/", headers={**TUS, "Upload-Length": str(len(data)), "Upload-Metadata": metadata}
    )
    assert created.status == 201
    path = URL(created.headers["Location"]).path
    inode = 0
    for offset in range(0, len(data), chunk):
        if offset + chunk >= len(data):
            inode = os.stat(folder / TUS_DIR / path.rsplit("/", 1)[-1] / "data").st_ino
        answer = await client.patch(
            path,
            data=data[offset : offset + chunk],
            headers={
                **TUS,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
            },
        )
        assert answer.status == 204, await answer.text()
    record = await (await client.get(f"/api/files/{answer.headers['Clustr-File-Id']}")).json()
    return str(record["stored_filename"]), inode


async def multipart_upload(client: Client, name: str, data: bytes) -> str:
    form = FormData()
    form.add_field("files", data, filename=name, content_type="application/octet-stream")
    answer = await client.post("/api/upload", data=form)
    assert answer.status == 200, await answer.text()
    return str((await answer.json())["data"][0]["stored_filename"])


async def test_an_upload_left_as_sent_is_its_data_file(
    make_client: MakeClient, upload_dir: Path
) -> None:
    client = await make_client(fsync=False)
    photo = JPEG * 64  # no metadata to remove: stored as sent
    name, inode = await tus_upload(client, upload_dir, "photo.jpg", photo, chunk=30_000)
    stored = upload_dir / name
    assert stored.read_bytes() == photo
    assert stored.stat().st_ino == inode  # the data file itself: not a byte written again
    assert stored.stat().st_nlink == 1  # the temporary name and the upload's let go of it
    [upload] = (upload_dir / TUS_DIR).iterdir()
    assert not (upload / "data").exists()  # the published upload's data name, released
    assert temp_files(upload_dir) == []


def _jpeg_with_gps() -> bytes:
    return encode("jpg", picture(), exif=exif_bytes()) + bytes(70_000)


def _png_with_late_text() -> bytes:
    png = encode("png", picture())
    end = png.rindex(b"IEND") - 4
    return png[:end] + png_chunk(b"tEXt", b"Comment\0taken at home") + png[end:] + bytes(70_000)


def _webp_with_exif() -> bytes:
    return encode("webp", picture((400, 300)), exif=exif_bytes())


CHANGED = {
    "JPEG, GPS removed at its start": (_jpeg_with_gps, "location", "jpg"),
    "PNG, a text chunk removed at its end": (_png_with_late_text, "all", "png"),
    "WebP, EXIF removed, its head patched": (_webp_with_exif, "location", "webp"),
    "JPEG, the bytes after its end dropped": (lambda: JPEG + bytes(70_000), "all", "jpg"),
}


@pytest.mark.parametrize(("make", "strip", "ext"), CHANGED.values(), ids=CHANGED.keys())
async def test_what_the_checks_change_is_stored_as_a_multipart_upload_stores_it(
    make_client: MakeClient, upload_dir: Path, make: Callable[[], bytes], strip: str, ext: str
) -> None:
    client = await make_client(fsync=False, strip_metadata=strip)
    data = make()
    by_tus, inode = await tus_upload(client, upload_dir, f"a.{ext}", data, chunk=len(data) // 3 + 1)
    by_multipart = await multipart_upload(client, f"b.{ext}", data)
    assert sorted(stored_files(upload_dir)) == sorted([by_tus, by_multipart])
    stored = (upload_dir / by_tus).read_bytes()
    assert stored == (upload_dir / by_multipart).read_bytes()
    assert stored != data  # the check did change it
    assert (upload_dir / by_tus).stat().st_ino != inode
    assert temp_files(upload_dir) == []
