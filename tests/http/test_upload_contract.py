"""``POST /api/upload``: the success envelope and the 406/415/400 answers, through a real server."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from yarl import URL

from clustr_aio.catalog.ids import is_id
from clustr_aio.settings import Settings
from tests.conftest import JPEG, PNG, WEBP, Client, assert_nothing_stored, stored_files
from tests.http.conftest import MakeClient
from tests.http.helpers import (
    BOUNDARY,
    Part,
    expect_error,
    multipart_body,
    multipart_headers,
    post_body,
    upload,
    upload_ok,
)

# --------------------------------------------------------------------------- 200


@pytest.mark.parametrize(
    ("filename", "data", "content_type"),
    [
        ("beach.jpg", JPEG, "image/jpeg"),
        ("beach.jpeg", JPEG, "image/jpeg"),
        ("dunes.png", PNG, "image/png"),
        ("sky.webp", WEBP, "image/webp"),
    ],
)
async def test_one_file_is_stored_and_described(
    client: Client,
    settings: Settings,
    upload_dir: Path,
    filename: str,
    data: bytes,
    content_type: str,
) -> None:
    before = datetime.now(UTC)
    [item] = await upload_ok(client, (filename, data))
    catalogued = {key: item.pop(key) for key in ("id", "sha256", "created_at", "duplicate")}
    assert item == {  # the original service's fields, exactly
        "stored_filename": filename,
        "preview_url": f"{settings.base_url}/uploads/{filename}",
        "original_filename": filename,
        "file_size": len(data),
        "content_type": content_type,
        "width": 32,
        "height": 24,
        "orientation": 1,
        "metadata_removed": False,
        "thumbnail_url": f"{settings.base_url}/api/files/{catalogued['id']}/thumbnail",
        "thumbnails": {
            str(size): f"{settings.base_url}/api/files/{catalogued['id']}/thumbnail?size={size}"
            for size in (256, 1024)
        },
    }
    assert is_id(catalogued["id"])
    assert catalogued["sha256"] == hashlib.sha256(data).hexdigest()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", catalogued["created_at"])
    created = datetime.fromisoformat(catalogued["created_at"])
    assert before - timedelta(seconds=1) <= created <= datetime.now(UTC)
    assert catalogued["duplicate"] is False
    assert (upload_dir / filename).read_bytes() == data
    assert stored_files(upload_dir) == [filename]


async def test_many_files_come_back_in_the_order_the_parts_arrived(
    client: Client, upload_dir: Path
) -> None:
    samples = [JPEG, PNG, WEBP]
    exts = ["jpg", "png", "webp"]
    # Names in non-alphabetical order, sizes all different: order and sizes cannot match by luck.
    files = [
        (f"{(37 * i) % 50:02d}-{i}.{exts[i % 3]}", samples[i % 3] + bytes(i)) for i in range(30)
    ]
    items = await upload_ok(client, *files)
    assert [item["original_filename"] for item in items] == [name for name, _ in files]
    assert [item["stored_filename"] for item in items] == [name for name, _ in files]
    assert [item["file_size"] for item in items] == [len(data) for _, data in files]
    for name, data in files:
        assert (upload_dir / name).read_bytes() == data


async def test_a_large_file_streams_through_intact(client: Client, upload_dir: Path) -> None:
    # Several write blocks (1 MiB) and an odd size, so block edges are crossed mid-chunk.
    data = JPEG + bytes(range(251)) * 20_000
    [item] = await upload_ok(client, ("big.jpg", data))
    assert item["file_size"] == len(data)
    assert (upload_dir / "big.jpg").read_bytes() == data


async def test_content_type_comes_from_the_bytes_not_the_client(client: Client) -> None:
    body = multipart_body(Part(JPEG, "photo.jpg", content_type="image/png"))
    response = await post_body(client, body)
    assert response.status == 200
    [item] = (await response.json())["data"]
    assert item["content_type"] == "image/jpeg"


async def test_parts_with_other_names_are_ignored(client: Client, upload_dir: Path) -> None:
    body = multipart_body(
        Part(b"a caption", filename=None, name="caption", content_type=None),
        Part(JPEG, "one.jpg"),
        Part(PNG, "not-a-file.png", name="thumbnail"),
        Part(PNG, "two.png"),
        Part(b"x" * 10_000, filename=None, name="notes", content_type=None),
    )
    response = await post_body(client, body)
    payload = await response.json()
    assert response.status == 200, payload
    assert payload["message"] == "Successfully uploaded 2 files"
    assert [item["stored_filename"] for item in payload["data"]] == ["one.jpg", "two.png"]
    assert stored_files(upload_dir) == ["one.jpg", "two.png"]


async def test_upper_case_extension_is_accepted_and_stored_lower_case(
    client: Client, upload_dir: Path
) -> None:
    [item] = await upload_ok(client, ("HOLIDAY.JPG", JPEG))
    assert item["stored_filename"] == "HOLIDAY.jpg"
    assert item["original_filename"] == "HOLIDAY.JPG"
    assert (upload_dir / "HOLIDAY.jpg").read_bytes() == JPEG


async def test_an_empty_file_input_beside_real_files_is_not_a_file(client: Client) -> None:
    # What a browser sends for a second <input type=file> the user left empty.
    body = multipart_body(Part(JPEG, "a.jpg"), Part(b"", ""))
    response = await post_body(client, body)
    assert response.status == 200
    assert len((await response.json())["data"]) == 1


async def test_preview_url_uses_public_base_url(make_client: MakeClient) -> None:
    client = await make_client(public_base_url="https://photos.example.com")
    [item] = await upload_ok(client, ("a.jpg", JPEG))
    assert item["preview_url"] == "https://photos.example.com/uploads/a.jpg"


async def test_preview_url_follows_upload_url_path(make_client: MakeClient) -> None:
    client = await make_client(upload_url_path="/media/originals")
    [item] = await upload_ok(client, ("a.jpg", JPEG))
    assert item["preview_url"].endswith(":5000/media/originals/a.jpg")
    response = await client.get("/media/originals/a.jpg")
    assert response.status == 200
    assert await response.read() == JPEG


async def test_preview_url_is_quoted_and_leads_to_the_file(client: Client) -> None:
    name = "100% sure #1 & a+b=c;d ü.jpg"
    [item] = await upload_ok(client, (name, JPEG))
    assert item["stored_filename"] == name
    assert item["preview_url"].endswith("/uploads/" + quote(name))
    assert "%25" in item["preview_url"]
    assert " " not in item["preview_url"]
    assert "#" not in item["preview_url"]
    # Follow the URL as a browser would: the path exactly as given, on the test server.
    path = URL(item["preview_url"], encoded=True).raw_path
    response = await client.session.get(client.make_url("").with_path(path, encoded=True))
    assert response.status == 200
    assert await response.read() == JPEG


# --------------------------------------------------------------------------- 406


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({}, b""),
        ({"Content-Type": "application/json"}, b'{"files": ["a.jpg"]}'),
        ({"Content-Type": "text/plain"}, JPEG),
        ({"Content-Type": "application/x-www-form-urlencoded"}, b"files=a.jpg"),
        ({"Content-Type": "image/jpeg"}, JPEG),
    ],
    ids=["no-body", "json", "text", "urlencoded", "raw-image"],
)
async def test_not_multipart_is_406(
    client: Client, upload_dir: Path, headers: dict[str, str], body: bytes
) -> None:
    response = await client.post("/api/upload", data=body, headers=headers)
    await expect_error(response, 406)
    assert_nothing_stored(upload_dir)


async def test_multipart_without_files_parts_is_406(client: Client, upload_dir: Path) -> None:
    body = multipart_body(
        Part(b"hello", filename=None, name="caption", content_type=None),
        Part(JPEG, "a.jpg", name="file"),  # singular: not the field the API reads
    )
    detail = await expect_error(await post_body(client, body), 406)
    assert "files" in detail
    assert_nothing_stored(upload_dir)


async def test_multipart_with_an_empty_body_is_406(client: Client, upload_dir: Path) -> None:
    """Nothing at all was sent: no files, rather than a malformed body."""
    detail = await expect_error(await post_body(client, b""), 406)
    assert "no files" in detail
    assert_nothing_stored(upload_dir)


async def test_multipart_with_no_parts_at_all_is_406(client: Client) -> None:
    await expect_error(await post_body(client, multipart_body()), 406)


async def test_only_an_empty_file_input_is_406(client: Client) -> None:
    await expect_error(await post_body(client, multipart_body(Part(b"", ""))), 406)


# --------------------------------------------------------------------------- 415


@pytest.mark.parametrize(
    ("filename", "data"),
    [
        ("notes.txt", b"just text"),
        ("photo.gif", b"GIF89a" + bytes(100)),
        ("photo.jpg.exe", JPEG),
        ("photo", JPEG),
        ("photo.", JPEG),
        (".", JPEG),
        (".jpg.", JPEG),
        (".gif", b"GIF89a" + bytes(100)),  # only an extension, but not an allowed one
        ("photo.jpg ", JPEG),
        ("a.png", JPEG),  # JPEG bytes behind a .png name
        ("a.jpg", PNG),
        ("a.webp", PNG),
        ("a.jpg", b"this is plain text, not an image"),
        ("a.jpg", b""),
        ("a.png", b""),
        ("a.jpg", JPEG[:2]),  # too short to hold the whole signature
        ("a.png", PNG[:7]),
        ("a.webp", b"RIFF\x24\x04\x00\x00WAVEfmt " + bytes(100)),  # RIFF, but not WebP
        ("a.webp", b"RIFF\x24\x04"),
    ],
)
async def test_bad_extension_or_bytes_is_415(
    client: Client, upload_dir: Path, filename: str, data: bytes
) -> None:
    detail = await expect_error(await upload(client, (filename, data)), 415)
    assert filename.strip() in detail or "empty" in detail or "extension" in detail
    assert_nothing_stored(upload_dir)


async def test_part_without_filename_is_415(client: Client, upload_dir: Path) -> None:
    body = multipart_body(Part(JPEG, filename=None))
    await expect_error(await post_body(client, body), 415)
    assert_nothing_stored(upload_dir)


async def test_415_detail_names_the_file_and_the_allowed_types(client: Client) -> None:
    detail = await expect_error(await upload(client, ("notes.txt", b"text")), 415)
    assert "notes.txt" in detail
    assert ".txt" in detail
    for ext in ("jpeg", "jpg", "png", "webp"):
        assert ext in detail


async def test_415_detail_says_what_the_bytes_really_are(client: Client) -> None:
    detail = await expect_error(await upload(client, ("a.png", JPEG)), 415)
    assert "image/jpeg" in detail
    assert "image/png" in detail


async def test_configured_extension_that_is_not_an_image_is_stored_unsniffed(
    make_client: MakeClient, upload_dir: Path
) -> None:
    client = await make_client(allowed_extensions=frozenset({"jpg", "bin"}))
    blob = bytes(range(256)) * 3
    items = await upload_ok(client, ("blob.bin", blob), ("jpeg.BIN", JPEG), ("a.jpg", JPEG))
    assert [(i["stored_filename"], i["content_type"]) for i in items] == [
        ("blob.bin", "application/octet-stream"),
        ("jpeg.bin", "application/octet-stream"),
        ("a.jpg", "image/jpeg"),
    ]
    assert (upload_dir / "blob.bin").read_bytes() == blob
    # …but .png is no longer allowed, and an empty .bin is still refused.
    await expect_error(await upload(client, ("a.png", PNG)), 415)
    await expect_error(await upload(client, ("empty.bin", b"")), 415)


# --------------------------------------------------------------------------- 400


GOOD = multipart_body(Part(JPEG, "a.jpg"))
MALFORMED: dict[str, tuple[str, bytes]] = {
    "missing-boundary-parameter": ("multipart/form-data", GOOD),
    "empty-boundary": ("multipart/form-data; boundary=", GOOD),
    "boundary-with-bad-characters": ("multipart/form-data; boundary=a@b{c}", GOOD),
    "boundary-too-long": ("multipart/form-data; boundary=" + "b" * 71, GOOD),
    "body-uses-another-boundary": (
        "multipart/form-data; boundary=somethingElse",
        GOOD,
    ),
    "garbage-body": (f"multipart/form-data; boundary={BOUNDARY}", b"\x00garbage" * 100),
    "truncated-part": (f"multipart/form-data; boundary={BOUNDARY}", GOOD[: len(GOOD) // 2]),
    "truncated-in-part-headers": (
        f"multipart/form-data; boundary={BOUNDARY}",
        f"--{BOUNDARY}\r\nContent-Disposition: form-da".encode(),
    ),
    "missing-closing-boundary": (
        f"multipart/form-data; boundary={BOUNDARY}",
        multipart_body(Part(JPEG, "a.jpg"), closed=False),
    ),
    "nested-multipart": (
        f"multipart/form-data; boundary={BOUNDARY}",
        multipart_body(
            Part(
                multipart_body(Part(JPEG, "inner.jpg"), boundary="inner"),
                "a.jpg",
                content_type="multipart/mixed; boundary=inner",
            )
        ),
    ),
    "part-without-content-disposition": (
        f"multipart/form-data; boundary={BOUNDARY}",
        f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n\r\n".encode()
        + JPEG
        + f"\r\n--{BOUNDARY}--\r\n".encode(),
    ),
    "junk-after-boundary": (
        f"multipart/form-data; boundary={BOUNDARY}",
        f"--{BOUNDARY}junk\r\n".encode() + GOOD[len(BOUNDARY) + 4 :],
    ),
}


@pytest.mark.parametrize(("content_type", "body"), MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_body_is_400(
    client: Client, upload_dir: Path, content_type: str, body: bytes
) -> None:
    response = await client.post("/api/upload", data=body, headers={"Content-Type": content_type})
    await expect_error(response, 400)
    assert_nothing_stored(upload_dir)


async def test_good_files_before_a_malformed_tail_are_not_kept(
    client: Client, upload_dir: Path
) -> None:
    body = multipart_body(Part(JPEG, "a.jpg"), Part(PNG, "b.png"), Part(JPEG * 5, "c.jpg"))
    await expect_error(await post_body(client, body[:-200]), 400)
    assert_nothing_stored(upload_dir)


async def test_same_request_with_a_correct_header_succeeds(client: Client) -> None:
    """The 400 cases above fail for their defect alone: the base body is fine."""
    response = await client.post("/api/upload", data=GOOD, headers=multipart_headers())
    assert response.status == 200
