"""tus 1.0.0 through a real server: core, every extension, the checks a multipart part gets,
locking, expiry. Interop with real clients is in tests/tus/."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from yarl import URL

from clustr_aio.auth.keys import create_key
from clustr_aio.web.keys import CATALOG
from clustr_aio.web.keys import TUS as TUS_KEY
from tests.conftest import JPEG, PNG, Client, stored_files, temp_files
from tests.http.conftest import MakeClient
from tests.http.helpers import WAIT_SECONDS
from tests.http.test_metrics import scrape, value
from tests.http.test_thumbnails import local, rendered
from tests.images.photos import encode, exif_bytes, picture, png_chunk

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {**TUS, "Content-Type": "application/offset+octet-stream"}
PHOTO = JPEG * 64  # 66 KB


def metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


async def create(client: Client, length: int | None, **headers: str) -> ClientResponse:
    sent = {**TUS, "Upload-Metadata": metadata(filename="photo.jpg")}
    if length is not None:
        sent["Upload-Length"] = str(length)
    sent.update({k.replace("_", "-"): v for k, v in headers.items()})
    return await client.post("/api/tus/", headers=sent)


async def created(client: Client, length: int | None, **headers: str) -> str:
    response = await create(client, length, **headers)
    assert response.status == 201, await response.text()
    return location(response)


def location(response: ClientResponse) -> str:
    """The path of the upload's URL (absolute, for the server's configured address)."""
    url = URL(response.headers["Location"])
    assert url.absolute
    assert url.path.startswith("/api/tus/")
    return url.path


async def patch(
    client: Client, url: str, offset: int, data: bytes, **headers: str
) -> ClientResponse:
    sent = {**OCTETS, "Upload-Offset": str(offset)}
    sent.update({k.replace("_", "-"): v for k, v in headers.items()})
    return await client.patch(url, headers=sent, data=data)


async def head(client: Client, url: str) -> ClientResponse:
    return await client.head(url, headers=TUS)


async def detail(response: ClientResponse) -> str:
    body: dict[str, Any] = json.loads(await response.text())
    return str(body["detail"])


@pytest.fixture
async def tus(make_client: MakeClient) -> Client:
    return await make_client(fsync=False)


# -- core ------------------------------------------------------------------------------------


async def test_options_lists_every_extension_and_algorithm(tus: Client) -> None:
    response = await tus.options("/api/tus/")
    assert response.status == 204
    assert response.headers["Tus-Version"] == "1.0.0"
    assert response.headers["Tus-Extension"].split(",") == [
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "expiration",
        "checksum",
        "termination",
        "concatenation",
        "concatenation-unfinished",
    ]
    assert response.headers["Tus-Max-Size"] == str(50 * 1024 * 1024)
    assert response.headers["Tus-Checksum-Algorithm"] == "sha1,sha256,md5"


async def test_upload_in_chunks_is_stored_and_catalogued(tus: Client, upload_dir: Path) -> None:
    url = await created(tus, len(PHOTO))
    state = await head(tus, url)
    assert state.status == 200
    assert state.headers["Upload-Offset"] == "0"
    assert state.headers["Upload-Length"] == str(len(PHOTO))
    assert state.headers["Cache-Control"] == "no-store"
    assert state.headers["Tus-Resumable"] == "1.0.0"
    assert "Clustr-File-Id" not in state.headers

    first = await patch(tus, url, 0, PHOTO[:40_000])
    assert first.status == 204
    assert first.headers["Upload-Offset"] == "40000"
    assert "Upload-Expires" in first.headers
    last = await patch(tus, url, 40_000, PHOTO[40_000:])
    assert last.status == 204, await last.text()
    assert last.headers["Upload-Offset"] == str(len(PHOTO))
    file_id = last.headers["Clustr-File-Id"]
    assert last.headers["Clustr-File-Url"].endswith(f"/api/files/{file_id}")

    assert stored_files(upload_dir) == ["photo.jpg"]
    assert (upload_dir / "photo.jpg").read_bytes() == PHOTO
    record = await (await tus.get(f"/api/files/{file_id}")).json()
    assert record["sha256"] == hashlib.sha256(PHOTO).hexdigest()
    assert record["original_filename"] == "photo.jpg"
    later = await head(tus, url)
    assert later.headers["Clustr-File-Id"] == file_id
    assert later.headers["Upload-Offset"] == str(len(PHOTO))


async def test_offset_mismatch_is_409(tus: Client) -> None:
    url = await created(tus, len(PHOTO))
    assert (await patch(tus, url, 0, PHOTO[:1000])).status == 204
    response = await patch(tus, url, 0, PHOTO[:1000])
    assert response.status == 409
    assert (await head(tus, url)).headers["Upload-Offset"] == "1000"


async def test_wrong_content_type_is_415(tus: Client) -> None:
    url = await created(tus, len(PHOTO))
    response = await tus.patch(
        url,
        headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/octet-stream"},
        data=PHOTO[:10],
    )
    assert response.status == 415
    assert response.headers["Content-Type"].startswith("application/json")


@pytest.mark.parametrize("version", [None, "0.2.2", "2.0.0"])
async def test_unsupported_version_is_412_with_tus_version(
    tus: Client, version: str | None
) -> None:
    headers = {"Upload-Length": "10", "Upload-Metadata": metadata(filename="a.jpg")}
    if version is not None:
        headers["Tus-Resumable"] = version
    response = await tus.post("/api/tus/", headers=headers)
    assert response.status == 412
    assert response.headers["Tus-Version"] == "1.0.0"
    assert "detail" in json.loads(await response.text())


async def test_unknown_upload_is_404(tus: Client) -> None:
    assert (await head(tus, "/api/tus/" + "0" * 32)).status == 404
    assert (await patch(tus, "/api/tus/" + "0" * 32, 0, b"x")).status == 404
    assert (await tus.head("/api/tus/..%2F..%2Fetc", headers=TUS)).status == 404


async def test_method_override(tus: Client) -> None:
    url = await created(tus, len(PHOTO))
    response = await tus.post(
        url,
        headers={**OCTETS, "Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"},
        data=PHOTO[:100],
    )
    assert response.status == 204
    assert response.headers["Upload-Offset"] == "100"


# -- creation --------------------------------------------------------------------------------


async def test_filename_is_required(tus: Client) -> None:
    response = await tus.post("/api/tus/", headers={**TUS, "Upload-Length": "10"})
    assert response.status == 400
    assert "filename" in await detail(response)


async def test_over_max_file_size_is_413_at_creation(make_client: MakeClient) -> None:
    client = await make_client(max_file_size=1024 * 1024)
    response = await create(client, 1024 * 1024 + 1)
    assert response.status == 413
    assert (await create(client, 1024 * 1024)).status == 201


async def test_extension_not_allowed_is_415_at_creation(tus: Client, upload_dir: Path) -> None:
    response = await create(tus, 10, Upload_Metadata=metadata(filename="notes.txt"))
    assert response.status == 415
    assert "txt" in await detail(response)
    assert not (upload_dir / ".tus").exists() or not any((upload_dir / ".tus").iterdir())


async def test_metadata_is_sanitised_and_echoed(tus: Client) -> None:
    url = await created(
        tus,
        len(PHOTO),
        Upload_Metadata=metadata(filename="фото\u202e\x00.jpg", filetype="image/jpeg", note="日本"),
    )
    echoed = (await head(tus, url)).headers["Upload-Metadata"]
    pairs = dict(pair.split(" ") for pair in echoed.split(","))
    assert base64.b64decode(pairs["filename"]).decode() == "фото.jpg"
    assert base64.b64decode(pairs["note"]).decode() == "日本"


@pytest.mark.parametrize(
    "value", ["filename !!!", "filename cGhvdG8=,filename cGhvdG8=", "fi,le", "filename //8="]
)
async def test_malformed_metadata_is_400(tus: Client, value: str) -> None:
    assert (await create(tus, 10, Upload_Metadata=value)).status == 400


async def test_creation_with_upload(tus: Client, upload_dir: Path) -> None:
    response = await tus.post(
        "/api/tus/",
        headers={
            **OCTETS,
            "Upload-Length": str(len(PHOTO)),
            "Upload-Metadata": metadata(filename="whole.jpg"),
        },
        data=PHOTO,
    )
    assert response.status == 201, await response.text()
    assert response.headers["Upload-Offset"] == str(len(PHOTO))
    assert "Clustr-File-Id" in response.headers
    assert stored_files(upload_dir) == ["whole.jpg"]


async def test_creation_defer_length(tus: Client, upload_dir: Path) -> None:
    url = await created(tus, None, Upload_Defer_Length="1")
    assert (await head(tus, url)).headers["Upload-Defer-Length"] == "1"
    assert (await patch(tus, url, 0, PHOTO[:5000])).status == 204
    done = await patch(tus, url, 5000, PHOTO[5000:], Upload_Length=str(len(PHOTO)))
    assert done.status == 204, await done.text()
    assert "Clustr-File-Id" in done.headers
    assert (await head(tus, url)).headers["Upload-Length"] == str(len(PHOTO))
    assert (upload_dir / "photo.jpg").read_bytes() == PHOTO


async def test_defer_length_needs_one_and_only_one(tus: Client) -> None:
    assert (await create(tus, None)).status == 400
    assert (await create(tus, 10, Upload_Defer_Length="1")).status == 400
    assert (await create(tus, None, Upload_Defer_Length="2")).status == 400


# -- the checks of a multipart part ------------------------------------------------------------


async def test_wrong_magic_bytes_terminate_the_upload_at_the_first_chunk(
    tus: Client, upload_dir: Path
) -> None:
    url = await created(tus, 10 * len(PNG))  # named .jpg, holds PNG
    response = await patch(tus, url, 0, PNG)
    assert response.status == 415
    assert "image/png" in await detail(response)
    assert (await head(tus, url)).status == 404  # terminated
    assert stored_files(upload_dir) == []


async def test_magic_bytes_checked_across_tiny_chunks(tus: Client) -> None:
    url = await created(tus, len(PNG))
    assert (await patch(tus, url, 0, PNG[:3])).status == 204  # not enough to tell yet
    assert (await patch(tus, url, 3, PNG[3:20])).status == 415


async def test_body_longer_than_upload_length_is_413(tus: Client) -> None:
    url = await created(tus, 100)
    response = await patch(tus, url, 0, PHOTO[:200])
    assert response.status == 413
    assert (await head(tus, url)).headers["Upload-Offset"] == "0"


async def test_dedupe_reuse_answers_with_the_stored_file(make_client: MakeClient) -> None:
    client = await make_client(fsync=False, dedupe="reuse")
    ids = []
    for _ in range(2):
        url = await created(client, len(PHOTO))
        done = await patch(client, url, 0, PHOTO)
        ids.append(done.headers["Clustr-File-Id"])
    assert ids[0] == ids[1]


# -- checksum --------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "md5"])
async def test_checksum_match_and_mismatch(tus: Client, algorithm: str) -> None:
    url = await created(tus, len(PHOTO))
    chunk = PHOTO[:30_000]
    good = base64.b64encode(hashlib.new(algorithm, chunk).digest()).decode()
    bad = base64.b64encode(hashlib.new(algorithm, b"other").digest()).decode()
    refused = await patch(tus, url, 0, chunk, Upload_Checksum=f"{algorithm} {bad}")
    assert refused.status == 460
    assert (await head(tus, url)).headers["Upload-Offset"] == "0"  # discarded
    accepted = await patch(tus, url, 0, chunk, Upload_Checksum=f"{algorithm} {good}")
    assert accepted.status == 204
    assert accepted.headers["Upload-Offset"] == "30000"


async def test_unknown_checksum_algorithm_is_400(tus: Client) -> None:
    url = await created(tus, len(PHOTO))
    response = await patch(tus, url, 0, PHOTO[:10], Upload_Checksum="crc32 AAAAAA==")
    assert response.status == 400


async def test_discarded_chunk_leaves_no_bytes_behind(tus: Client, upload_dir: Path) -> None:
    url = await created(tus, len(PHOTO))
    await patch(tus, url, 0, PHOTO[:1000])
    await patch(tus, url, 1000, b"\0" * 5000, Upload_Checksum="sha1 AAAAAAAAAAAAAAAAAAAAAAAAAAA=")
    assert (await patch(tus, url, 1000, PHOTO[1000:])).status == 204
    assert (upload_dir / "photo.jpg").read_bytes() == PHOTO


# -- termination -----------------------------------------------------------------------------


async def test_termination(tus: Client, upload_dir: Path) -> None:
    url = await created(tus, len(PHOTO))
    await patch(tus, url, 0, PHOTO[:1000])
    response = await tus.delete(url, headers=TUS)
    assert response.status == 204
    assert (await head(tus, url)).status == 404
    assert (await patch(tus, url, 1000, PHOTO[1000:])).status == 404
    assert list((upload_dir / ".tus").iterdir()) == []


# -- concatenation ---------------------------------------------------------------------------


async def partial(client: Client, data: bytes, *, send: bool = True) -> str:
    response = await client.post(
        "/api/tus/", headers={**TUS, "Upload-Length": str(len(data)), "Upload-Concat": "partial"}
    )
    assert response.status == 201
    url = location(response)
    if send:
        assert (await patch(client, url, 0, data)).status == 204
    return url


async def final(client: Client, *urls: str, filename: str = "joined.jpg") -> ClientResponse:
    return await client.post(
        "/api/tus/",
        headers={
            **TUS,
            "Upload-Concat": "final;" + " ".join(urls),
            "Upload-Metadata": metadata(filename=filename),
        },
    )


async def test_concatenation(tus: Client, upload_dir: Path) -> None:
    pieces = [PHOTO[:20_000], PHOTO[20_000:50_000], PHOTO[50_000:]]
    urls = [await partial(tus, piece) for piece in pieces]
    assert (await head(tus, urls[0])).headers["Upload-Concat"] == "partial"
    response = await final(tus, *urls)
    assert response.status == 201, await response.text()
    assert "Clustr-File-Id" in response.headers
    assert (upload_dir / "joined.jpg").read_bytes() == PHOTO
    state = await head(tus, location(response))
    assert state.headers["Upload-Concat"].startswith("final;")
    assert state.headers["Upload-Length"] == str(len(PHOTO))
    assert state.headers["Upload-Offset"] == str(len(PHOTO))


async def test_concatenation_unfinished(tus: Client, upload_dir: Path) -> None:
    first = await partial(tus, PHOTO[:30_000])
    second = await partial(tus, PHOTO[30_000:], send=False)
    response = await final(tus, first, second)
    assert response.status == 201
    final_url = location(response)
    state = await head(tus, final_url)
    assert "Upload-Offset" not in state.headers  # not whole yet
    assert "Clustr-File-Id" not in state.headers
    assert (await patch(tus, final_url, 0, b"x")).status == 403
    assert (await patch(tus, second, 0, PHOTO[30_000:])).status == 204
    state = await head(tus, final_url)
    assert "Clustr-File-Id" in state.headers
    assert (upload_dir / "joined.jpg").read_bytes() == PHOTO
    # The parts' bytes are the stored file's now: both are gone, the final's state stays.
    assert (await head(tus, first)).status == 404
    assert (await head(tus, second)).status == 404


async def test_final_of_unknown_or_whole_uploads_is_400(tus: Client) -> None:
    assert (await final(tus, "/api/tus/" + "0" * 32)).status == 400
    url = await created(tus, len(PHOTO))
    assert (await final(tus, url)).status == 400


async def test_final_with_wrong_bytes_is_415(tus: Client) -> None:
    url = await partial(tus, PNG)
    assert (await final(tus, url)).status == 415


# -- locking ---------------------------------------------------------------------------------


async def test_concurrent_patches_one_wins_the_others_423(tus: Client) -> None:
    url = await created(tus, len(PHOTO) * 20)
    gate = asyncio.Event()

    async def slow_body() -> Any:
        yield PHOTO[:1000]
        await gate.wait()
        yield PHOTO[1000:2000]

    first = asyncio.ensure_future(
        tus.patch(url, headers={**OCTETS, "Upload-Offset": "0"}, data=slow_body())
    )
    for _ in range(100):  # until the first PATCH holds the upload
        await asyncio.sleep(0.02)
        # At an offset that never fits (409 while the upload is free), so that one that
        # comes before the first PATCH took the lock cannot change the upload.
        others = await asyncio.gather(*(patch(tus, url, 1, PHOTO[:10]) for _ in range(3)))
        if all(r.status == 423 for r in others):
            break
    assert [r.status for r in others] == [423, 423, 423]
    state = await head(tus, url)  # never waits for the lock
    assert state.status == 200
    gate.set()
    assert (await first).status == 204
    assert (await head(tus, url)).headers["Upload-Offset"] == "2000"


async def test_a_broken_connection_keeps_what_arrived_and_frees_the_lock(
    tus: Client,
) -> None:
    url = await created(tus, len(PHOTO))
    host, port = tus.server.host, tus.server.port
    _reader, writer = await asyncio.open_connection(host, port)
    path = url
    writer.write(
        (
            f"PATCH {path} HTTP/1.1\r\nHost: {host}\r\nTus-Resumable: 1.0.0\r\n"
            f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
            f"Content-Length: {len(PHOTO)}\r\n\r\n"
        ).encode()
        + PHOTO[:20_000]
    )
    await writer.drain()
    for _ in range(200):
        await asyncio.sleep(0.02)
        if (await patch(tus, url, 0, b"")).status == 423:
            break
    writer.transport.abort()  # the client is gone mid-body
    for _ in range(200):
        await asyncio.sleep(0.02)
        state = await head(tus, url)
        if state.headers["Upload-Offset"] != "0":
            break
    assert state.headers["Upload-Offset"] == "20000"
    response = await patch(tus, url, 20_000, PHOTO[20_000:])
    assert response.status == 204, await response.text()


# -- expiration ------------------------------------------------------------------------------


async def test_expired_upload_is_410_then_swept_to_404(
    make_client: MakeClient, upload_dir: Path
) -> None:
    client = await make_client(fsync=False, tus_expiry=1.0)
    url = await created(client, len(PHOTO))
    assert "Upload-Expires" in (await head(client, url)).headers
    await asyncio.sleep(1.05)
    statuses = set()
    for _ in range(100):
        statuses.add((await head(client, url)).status)
        if 404 in statuses:
            break
        await asyncio.sleep(0.05)
    assert statuses <= {410, 404}
    assert 404 in statuses
    # Its state goes first (then it is a 404), the rest of its folder right after.
    for _ in range(100):
        if not any((upload_dir / ".tus").iterdir()):
            break
        await asyncio.sleep(0.02)
    assert list((upload_dir / ".tus").iterdir()) == []


# -- CORS ------------------------------------------------------------------------------------


async def test_tus_headers_are_exposed_to_browsers(tus: Client) -> None:
    origin = {"Origin": "https://app.example"}
    preflight = await tus.options(
        "/api/tus/",
        headers={
            **origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "tus-resumable,upload-length,upload-metadata",
        },
    )
    assert preflight.status == 200
    allowed = preflight.headers["Access-Control-Allow-Headers"].lower()
    assert "upload-length" in allowed
    assert "upload-metadata" in allowed
    response = await create(tus, len(PHOTO), **origin)
    exposed = response.headers["Access-Control-Expose-Headers"].lower().split(",")
    assert {"location", "upload-expires", "tus-resumable"} <= set(exposed)
    url = location(response)
    done = await tus.patch(url, headers={**OCTETS, **origin, "Upload-Offset": "0"}, data=PHOTO)
    exposed = done.headers["Access-Control-Expose-Headers"].lower().split(",")
    assert {"upload-offset", "clustr-file-id", "clustr-file-url"} <= set(exposed)


async def test_a_final_whose_parts_completed_before_a_crash_is_finished_later(
    tus: Client, upload_dir: Path
) -> None:
    """A crash between a part's last commit and its final's publishing: the next HEAD of the
    final (or the sweeper's first round after a restart) publishes it."""
    first = await partial(tus, PHOTO[:30_000])
    second = await partial(tus, PHOTO[30_000:], send=False)
    final_url = location(await final(tus, first, second))
    app = tus.app
    assert app is not None
    store = app[TUS_KEY].store
    async with store.hold(second.rsplit("/", 1)[1]) as held:  # as the crashed PATCH left it
        await held.append(chunks(PHOTO[30_000:]))
        await held.commit(held.info.with_changes(offset=len(PHOTO) - 30_000))
    assert stored_files(upload_dir) == []
    state = await head(tus, final_url)
    assert "Clustr-File-Id" in state.headers
    assert (upload_dir / "joined.jpg").read_bytes() == PHOTO


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


# -- the IETF draft's interop version ----------------------------------------------------------

DRAFT = {"Upload-Draft-Interop-Version": "6"}
PARTIAL_UPLOAD = {**DRAFT, "Content-Type": "application/partial-upload"}


async def test_ietf_draft_length_known_at_upload_complete(tus: Client, upload_dir: Path) -> None:
    response = await tus.post(
        "/api/tus/",
        headers={
            **PARTIAL_UPLOAD,
            "Upload-Complete": "?0",
            "Upload-Metadata": metadata(filename="d.jpg"),
        },
        data=PHOTO[:40_000],
    )
    assert response.status == 201, await response.text()
    assert response.headers["Upload-Complete"] == "?0"
    url = location(response)
    state = await tus.head(url, headers=DRAFT)
    assert state.headers["Upload-Offset"] == "40000"
    wrong = await tus.patch(
        url, headers={**DRAFT, "Content-Type": "application/offset+octet-stream",
                      "Upload-Offset": "40000"}, data=b"x",
    )  # fmt: skip
    assert wrong.status == 415
    bad = await tus.patch(
        url,
        headers={**PARTIAL_UPLOAD, "Upload-Offset": "40000", "Upload-Complete": "yes"},
        data=b"x",
    )
    assert bad.status == 400
    done = await tus.patch(
        url,
        headers={**PARTIAL_UPLOAD, "Upload-Offset": "40000", "Upload-Complete": "?1"},
        data=PHOTO[40_000:],
    )
    assert done.status == 204, await done.text()
    assert done.headers["Upload-Complete"] == "?1"
    assert "Clustr-File-Id" in done.headers
    assert (upload_dir / "d.jpg").read_bytes() == PHOTO


async def test_auth_keys_guard_the_tus_routes(make_client: MakeClient) -> None:
    """AUTH=keys: every tus request needs a key with the upload scope (discovery stays open)."""
    client = await make_client(auth="keys", fsync=False)
    app = client.app
    assert app is not None
    reader, _ = await create_key(app[CATALOG], "reader", ("read",))
    uploader, _ = await create_key(app[CATALOG], "uploader", ("upload",))
    assert (await create(client, len(PHOTO))).status == 401
    assert (await create(client, len(PHOTO), Authorization=f"Bearer {reader}")).status == 403
    url = await created(client, len(PHOTO), Authorization=f"Bearer {uploader}")
    assert (await head(client, url)).status == 401
    assert (await patch(client, url, 0, PHOTO)).status == 401
    done = await patch(client, url, 0, PHOTO, Authorization=f"Bearer {uploader}")
    assert done.status == 204
    assert (await client.options("/api/tus/")).status == 204


# -- as multipart uploads are: metrics, eager thumbnails -------------------------------------


async def test_tus_uploads_count_in_the_upload_metrics(tus: Client) -> None:
    url = await created(tus, len(PHOTO))
    assert (await patch(tus, url, 0, PHOTO[:40_000])).status == 204

    # A PATCH whose body is on its way is an upload in flight.
    sent_half = asyncio.Event()
    go_on = asyncio.Event()

    async def slow_rest() -> AsyncIterator[bytes]:
        rest = PHOTO[40_000:]
        yield rest[:10_000]
        sent_half.set()
        await go_on.wait()
        yield rest[10_000:]

    last = asyncio.ensure_future(
        tus.patch(
            url,
            headers={
                **OCTETS,
                "Upload-Offset": "40000",
                "Content-Length": str(len(PHOTO) - 40_000),
            },
            data=slow_rest(),
        )
    )
    await sent_half.wait()
    # The 10,000 bytes may sit in the client's socket a while on a loaded machine: poll.
    deadline = time.monotonic() + WAIT_SECONDS
    while value(await scrape(tus), "clustr_uploads_in_flight") != 1:
        assert time.monotonic() < deadline, "the PATCH never counted as in flight"
        await asyncio.sleep(0.02)
    go_on.set()
    done = await last
    assert done.status == 204, await done.text()

    refused = await create(tus, 10, Upload_Metadata=metadata(filename="notes.txt"))
    assert refused.status == 415
    wrong = await created(tus, len(PNG), Upload_Metadata=metadata(filename="fake.jpg"))
    assert (await patch(tus, wrong, 0, PNG)).status == 415
    long = await created(tus, 100)
    assert (await patch(tus, long, 0, PHOTO[:200])).status == 413

    samples = await scrape(tus)
    assert value(samples, "clustr_upload_stored_files_total") == 1
    assert value(samples, "clustr_upload_stored_bytes_total") == len(PHOTO)
    received = value(samples, "clustr_upload_received_bytes_total")
    assert len(PHOTO) < received <= len(PHOTO) + len(PNG)  # the fake's first bytes, at least
    rejections = "clustr_upload_rejections_total"
    assert value(samples, rejections, reason="unsupported_type") == 2
    assert value(samples, rejections, reason="too_large") == 1
    assert value(samples, "clustr_uploads_in_flight") == 0


async def test_eager_thumbnails_render_a_finished_tus_upload(make_client: MakeClient) -> None:
    client = await make_client(fsync=False, thumbnails="eager")
    photo = encode("jpg", picture((1200, 900)))
    url = await created(client, len(photo))
    assert (await rendered(client)) == 0
    half = len(photo) // 2
    assert (await patch(client, url, 0, photo[:half])).status == 204
    done = await patch(client, url, half, photo[half:])
    assert done.status == 204, await done.text()
    for _ in range(200):
        if await rendered(client) == 2:
            break
        await asyncio.sleep(0.05)
    assert await rendered(client) == 2  # every THUMBNAIL_SIZES, without a GET
    item = await (await client.get(f"/api/files/{done.headers['Clustr-File-Id']}")).json()
    for thumbnail in item["thumbnails"].values():
        assert (await client.get(local(thumbnail))).status == 200
    assert await rendered(client) == 2  # they were cached


# -- the pipeline fed as the bytes arrive (tus/live.py), or the upload read back -------------


async def test_a_structure_broken_midway_is_refused_before_the_end(
    tus: Client, upload_dir: Path
) -> None:
    """The live pipeline run checks the bytes as PATCHes bring them: a PNG chunk with a bad CRC
    in the middle ends the upload at a PATCH before its last byte."""
    ihdr = (64).to_bytes(4, "big") + (64).to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    broken = bytearray(png_chunk(b"IDAT", bytes(4000)))
    broken[-1] ^= 0xFF  # its CRC
    image = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + bytes(broken)
    image += png_chunk(b"IDAT", bytes(200_000)) + png_chunk(b"IEND", b"")
    url = await created(tus, len(image), Upload_Metadata=metadata(filename="cut.png"))
    offset, statuses = 0, []
    while offset < len(image):
        piece = image[offset : offset + 10_000]
        answer = await patch(tus, url, offset, piece)
        statuses.append(answer.status)
        if answer.status != 204:
            assert "bad CRC" in await detail(answer)
            break
        offset += len(piece)
        await asyncio.sleep(0.02)  # the run's turn
    assert statuses[-1] == 415
    assert offset < len(image) - 10_000  # refused well before the last PATCH
    assert (await head(tus, url)).status == 404
    assert stored_files(upload_dir) == []
    assert temp_files(upload_dir) == []


async def test_a_chunk_taken_back_ends_the_live_run_and_the_upload_is_read_back(
    tus: Client, upload_dir: Path
) -> None:
    # GPS to remove: the live run writes its file (one left as sent is never written again).
    photo = encode("jpg", picture(), exif=exif_bytes()) + bytes(70_000)
    url = await created(tus, len(photo))
    assert (await patch(tus, url, 0, photo[:30_000])).status == 204
    for _ in range(100):  # the live run's copy, written out once idle
        if temp_files(upload_dir):
            break
        await asyncio.sleep(0.02)
    assert len(temp_files(upload_dir)) == 1
    # A chunk whose checksum fails was fed to the live run already: the run is dropped...
    bad = base64.b64encode(hashlib.sha1(b"other").digest()).decode()
    refused = await patch(tus, url, 30_000, photo[30_000:], Upload_Checksum=f"sha1 {bad}")
    assert refused.status == 460
    assert temp_files(upload_dir) == []  # its batch discarded
    # ...and the finished upload is read back from its data instead.
    done = await patch(tus, url, 30_000, photo[30_000:])
    assert done.status == 204, await done.text()
    stored = (upload_dir / "photo.jpg").read_bytes()
    assert stored != photo  # its GPS removed
    assert stored.endswith(bytes(70_000))
    record = await (await tus.get(f"/api/files/{done.headers['Clustr-File-Id']}")).json()
    assert record["sha256"] == hashlib.sha256(photo).hexdigest()
    assert temp_files(upload_dir) == []
