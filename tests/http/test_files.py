"""The catalog through the real server: upload items' ids, /api/files (list, get, delete,
check), DEDUPE and per-file results, each against SQLite and against PostgreSQL."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse

from clustr_aio.catalog import reconcile
from clustr_aio.catalog.factory import SQLITE_FILE
from clustr_aio.catalog.ids import new_id
from clustr_aio.catalog.postgres import PostgresCatalog
from clustr_aio.catalog.sqlite import SqliteCatalog
from clustr_aio.storage import journal
from tests.conftest import JPEG, PNG, WEBP, Client, stored_files, temp_files
from tests.http.conftest import MakeClient
from tests.http.helpers import (
    error_body,
    eventually,
    expect_error,
    files_body,
    post_body,
    upload,
    upload_ok,
)

KIB = 1024


@pytest.fixture
async def catalogued(make_client: MakeClient, database_url: str | None) -> MakeClient:
    """``await catalogued(**settings)``: a server on the catalog backend of this run."""

    async def make(**overrides: Any) -> Client:
        return await make_client(database_url=database_url, **overrides)

    return make


async def upload_each(client: Client, files: list[tuple[str, bytes]]) -> ClientResponse:
    return await post_body(client, files_body(*files), query="?atomic=false")


def jpeg(n: int) -> bytes:
    """A JPEG of its own bytes (a different sha256 per n)."""
    return JPEG + n.to_bytes(4, "big")


async def list_all(client: Client, **query: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {**query, **({"cursor": cursor} if cursor else {})}
        response = await client.get("/api/files", params=params)
        page = await response.json()
        assert response.status == 200, page
        items += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


async def test_an_uploaded_file_is_listed_and_found_by_its_id(catalogued: MakeClient) -> None:
    client = await catalogued()
    [item] = await upload_ok(client, ("beach.jpg", JPEG))
    response = await client.get(f"/api/files/{item['id']}")
    assert response.status == 200
    found = await response.json()
    assert found == {k: v for k, v in item.items() if k != "duplicate"}
    assert await list_all(client) == [found]


async def test_the_embedded_catalog_lives_beside_the_uploads_and_is_never_served(
    make_client: MakeClient, upload_dir: Path
) -> None:
    client = await make_client()
    await upload_ok(client, ("a.jpg", JPEG))
    assert (upload_dir / SQLITE_FILE).is_file()
    for name in (SQLITE_FILE, f"{SQLITE_FILE}-wal", f"{SQLITE_FILE}-shm", f"{SQLITE_FILE}.lock"):
        await expect_error(await client.get(f"/uploads/{name}"), 404)
    assert stored_files(upload_dir) == ["a.jpg"]


async def test_pages_over_2500_files_with_deletes_between_them_neither_repeat_nor_skip(
    catalogued: MakeClient,
) -> None:
    client = await catalogued(fsync=False)
    uploaded = await upload_ok(client, *[(f"{n}.jpg", jpeg(n)) for n in range(2500)])
    ids = [item["id"] for item in uploaded]
    assert ids == sorted(ids)  # in the order the parts arrived
    seen: list[str] = []
    deleted: set[str] = set()
    cursor = None
    while True:
        params = {"limit": "100", "order": "oldest", **({"cursor": cursor} if cursor else {})}
        page = await (await client.get("/api/files", params=params)).json()
        seen += [item["id"] for item in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        # Between pages: delete a file already seen and two not seen yet.
        upcoming = [i for i in ids if i > seen[-1] and i not in deleted][3:5]
        doomed = [seen[-50], *upcoming]
        response = await client.post("/api/files/delete", json={"ids": doomed})
        assert (await response.json()) == {"deleted": doomed, "missing": []}
        deleted |= set(doomed)
    assert len(seen) == len(set(seen))
    # Every file that stayed, in order, and only deleted ones that were seen before deletion.
    assert seen == [i for i in ids if i not in deleted or i in set(seen)]
    assert deleted - set(seen)  # some really were deleted before their page came
    newest = await list_all(client, limit="1000")
    assert [item["id"] for item in newest] == sorted(set(ids) - deleted, reverse=True)


async def test_listing_by_content_type_and_order(catalogued: MakeClient) -> None:
    client = await catalogued()
    items = await upload_ok(client, ("a.jpg", JPEG), ("b.png", PNG), ("c.webp", WEBP))
    pngs = await list_all(client, content_type="image/png")
    assert [i["stored_filename"] for i in pngs] == ["b.png"]
    oldest = await list_all(client, order="oldest", limit="1")
    assert [i["id"] for i in oldest] == [i["id"] for i in items]


async def test_a_deleted_file_is_gone_from_the_catalog_the_disk_and_uploads(
    catalogued: MakeClient, upload_dir: Path
) -> None:
    client = await catalogued()
    [item, kept] = await upload_ok(client, ("a.jpg", JPEG), ("b.jpg", jpeg(1)))
    response = await client.delete(f"/api/files/{item['id']}")
    assert response.status == 204
    assert stored_files(upload_dir) == ["b.jpg"]
    await expect_error(await client.get(f"/api/files/{item['id']}"), 404)
    await expect_error(await client.get("/uploads/a.jpg"), 404)
    await expect_error(await client.delete(f"/api/files/{item['id']}"), 404)
    assert [i["id"] for i in await list_all(client)] == [kept["id"]]
    # And the name is free again.
    [again] = await upload_ok(client, ("a.jpg", JPEG))
    assert again["stored_filename"] == "a.jpg"


@pytest.mark.parametrize("fsync", [True, False], ids=["fsync", "no-fsync"])
async def test_a_bulk_delete_removes_every_file_at_once_and_leaves_nothing_behind(
    catalogued: MakeClient, upload_dir: Path, fsync: bool
) -> None:
    """The files go in one step (a rename each into the process's directory, one flush of
    the folder), then their records; the renamed files are freed in the background."""
    client = await catalogued(fsync=fsync)
    items = await upload_ok(client, *[(f"{n}.jpg", jpeg(n)) for n in range(40)])
    doomed = [item["id"] for item in items[::2]]
    unknown = new_id()
    response = await client.post("/api/files/delete", json={"ids": [*doomed, unknown]})
    assert await response.json() == {"deleted": doomed, "missing": [unknown]}
    kept = [item["stored_filename"] for item in items[1::2]]
    assert stored_files(upload_dir) == sorted(kept)
    for item in items[:4]:
        status = (await client.get(f"/uploads/{item['stored_filename']}")).status
        assert status == (404 if item["id"] in doomed else 200)
    assert [i["id"] for i in await list_all(client, order="oldest")] == [
        item["id"] for item in items[1::2]
    ]
    await eventually(lambda: temp_files(upload_dir) == [])  # the trash is freed too
    # Their names are free again, the lowest first.
    [again] = await upload_ok(client, ("0.jpg", JPEG))
    assert again["stored_filename"] == "0.jpg"


async def test_check_answers_in_request_order(catalogued: MakeClient) -> None:
    client = await catalogued()
    [a, b] = await upload_ok(client, ("a.jpg", JPEG), ("b.png", PNG))
    unknown = hashlib.sha256(b"never sent").hexdigest()
    asked = [b["sha256"], unknown, a["sha256"].upper(), b["sha256"]]
    response = await client.post("/api/files/check", json={"sha256": asked})
    assert response.status == 200
    assert (await response.json())["results"] == [
        {"sha256": asked[0], "id": b["id"]},
        {"sha256": unknown, "id": None},
        {"sha256": asked[2], "id": a["id"]},
        {"sha256": asked[3], "id": b["id"]},
    ]
    many = [hashlib.sha256(str(n).encode()).hexdigest() for n in range(10_000)]
    response = await client.post("/api/files/check", json={"sha256": many})
    results = (await response.json())["results"]
    assert [r["sha256"] for r in results] == many
    assert all(r["id"] is None for r in results)
    # 10,000 of them, the stored ones among them (first, last, twice, in capitals), as one
    # upload's client would ask: the answer's JSON is written out by hand, piece by piece.
    many[0], many[5000], many[-1] = a["sha256"], b["sha256"].upper(), a["sha256"]
    many[7] = many[9] = many[8].upper()
    response = await client.post("/api/files/check", json={"sha256": many})
    assert response.status == 200
    assert response.content_type == "application/json"
    stored = {a["sha256"]: a["id"], b["sha256"]: b["id"]}
    assert (await response.json())["results"] == [
        {"sha256": digest, "id": stored.get(digest.lower())} for digest in many
    ]


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/api/files?limit=0", None, 400),
        ("GET", "/api/files?limit=1001", None, 400),
        ("GET", "/api/files?limit=ten", None, 400),
        ("GET", "/api/files?limit=%EF%BC%91", None, 400),  # a full-width digit one
        ("GET", "/api/files?order=random", None, 400),
        ("GET", "/api/files?content_type=text/html", None, 400),
        ("GET", "/api/files?cursor=bm90LWEtY3Vyc29y", None, 400),
        ("GET", "/api/files?cursor=%25%25", None, 400),
        ("GET", "/api/files/not-an-id", None, 404),
        ("GET", f"/api/files/{new_id()}", None, 404),
        ("GET", f"/api/files/{new_id().upper()}", None, 404),
        ("DELETE", f"/api/files/{new_id()}", None, 404),
        ("GET", "/api/files/check", None, 405),
        ("POST", "/api/files/delete", {"ids": []}, 400),
        ("POST", "/api/files/delete", {"ids": ["x"]}, 400),
        ("POST", "/api/files/delete", {"ids": [new_id()] * 1001}, 400),
        ("POST", "/api/files/delete", {"id": [new_id()]}, 400),
        ("POST", "/api/files/delete", [new_id()], 400),
        ("POST", "/api/files/check", {"sha256": ["abc"]}, 400),
        ("POST", "/api/files/check", {"sha256": ["0" * 64] * 10_001}, 400),
        ("POST", "/api/files/check", {"sha256": "0" * 64}, 400),
        ("POST", "/api/files/check", "not json", 400),
    ],
)
async def test_bad_parameters_and_bodies_are_json_errors(
    catalogued: MakeClient, method: str, path: str, body: object, status: int
) -> None:
    client = await catalogued()
    if body == "not json":
        response = await client.request(
            method, path, data=b"{", headers={"Content-Type": "application/json"}
        )
    else:
        response = await client.request(method, path, json=body)
    await expect_error(response, status)


async def test_a_cursor_of_one_order_is_refused_in_the_other(catalogued: MakeClient) -> None:
    client = await catalogued()
    await upload_ok(client, ("a.jpg", JPEG), ("b.jpg", jpeg(1)))
    page = await (await client.get("/api/files", params={"limit": "1"})).json()
    cursor = page["next_cursor"]
    response = await client.get("/api/files", params={"cursor": cursor, "order": "oldest"})
    assert "another order" in await expect_error(response, 400)


async def test_a_failed_commit_withdraws_the_published_files(
    catalogued: MakeClient, upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await catalogued()

    async def fail(self: object, records: object) -> None:
        raise OSError("the database is gone")

    monkeypatch.setattr(SqliteCatalog, "add", fail)
    monkeypatch.setattr(PostgresCatalog, "add", fail)
    await expect_error(await upload(client, ("a.jpg", JPEG), ("b.jpg", jpeg(1))), 500)
    assert stored_files(upload_dir) == []  # nothing without its record
    await eventually(lambda: temp_files(upload_dir) == [])  # freed after the answer
    monkeypatch.undo()
    assert await list_all(client) == []


async def test_a_seal_that_fails_withdraws_the_files_and_their_committed_records(
    catalogued: MakeClient, upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the commit, the batch is sealed; should that fail (an I/O error), the answer is
    a 500 and nothing of the upload stays: neither its files nor its records."""
    client = await catalogued(dedupe="reuse")
    await upload_ok(client, ("a.jpg", JPEG))

    def fail(path: Path, *, durable: bool) -> Path:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(journal, "seal", fail)
    await expect_error(await upload(client, ("new.png", PNG), ("b.jpg", jpeg(7))), 500)
    assert stored_files(upload_dir) == ["a.jpg"]
    assert [i["stored_filename"] for i in await list_all(client)] == ["a.jpg"]
    await eventually(lambda: temp_files(upload_dir) == [])


# ----------------------------------------------------------------------------- reconciliation


async def test_the_next_start_adopts_planted_files_and_forgets_removed_ones(
    catalogued: MakeClient, upload_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = await catalogued()
    [removed, kept] = await upload_ok(client, ("gone.jpg", JPEG), ("kept.png", PNG))
    await client.close()
    (upload_dir / "gone.jpg").unlink()  # an operator's rm
    (upload_dir / "planted.webp").write_bytes(WEBP)  # an operator's cp, or a restore
    (upload_dir / ".hidden.jpg").write_bytes(JPEG)  # never served, so never catalogued

    with caplog.at_level(logging.INFO, logger="clustr_aio.catalog"):
        client = await catalogued()
    assert "1 files without a record adopted, 1 records without a file removed" in caplog.text
    listed = {item["stored_filename"]: item for item in await list_all(client)}
    assert sorted(listed) == ["kept.png", "planted.webp"]
    assert listed["kept.png"] == {k: v for k, v in kept.items() if k != "duplicate"}
    planted = listed["planted.webp"]
    assert planted["original_filename"] == "planted.webp"
    assert planted["sha256"] == hashlib.sha256(WEBP).hexdigest()
    assert planted["content_type"] == "image/webp"
    await expect_error(await client.get(f"/api/files/{removed['id']}"), 404)

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="clustr_aio.catalog"):
        await catalogued()  # nothing left to repair
    assert "0 files without a record adopted, 0 records without a file removed" in caplog.text


async def test_the_reconciliation_walks_records_and_files_a_chunk_at_a_time(
    catalogued: MakeClient, upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of 3 (a thousand in production) over 20 records and files: every record whose
    file is gone and every planted file is found, whichever chunk it falls in."""
    monkeypatch.setattr(reconcile, "_CHUNK", 3)
    client = await catalogued()
    items = await upload_ok(client, *[(f"{n:02}.jpg", jpeg(n)) for n in range(20)])
    await client.close()
    gone = items[::3]
    for item in gone:
        (upload_dir / item["stored_filename"]).unlink()
    planted = [f"planted-{n}.png" for n in range(7)]
    for name in planted:
        (upload_dir / name).write_bytes(PNG)

    client = await catalogued()
    listed = sorted(item["stored_filename"] for item in await list_all(client))
    kept = [item["stored_filename"] for item in items if item not in gone]
    assert listed == sorted(kept + planted)
    for item in gone:
        await expect_error(await client.get(f"/api/files/{item['id']}"), 404)


# ----------------------------------------------------------------------------- DEDUPE


async def test_dedupe_off_stores_every_copy(catalogued: MakeClient, upload_dir: Path) -> None:
    client = await catalogued()
    first = await upload_ok(client, ("a.jpg", JPEG), ("b.jpg", JPEG))
    second = await upload_ok(client, ("a.jpg", JPEG))
    assert [i["stored_filename"] for i in first + second] == ["a.jpg", "b.jpg", "a-1.jpg"]
    assert not any(i["duplicate"] for i in first + second)
    assert len({i["sha256"] for i in first + second}) == 1
    assert stored_files(upload_dir) == ["a-1.jpg", "a.jpg", "b.jpg"]


async def test_dedupe_reuse_answers_with_the_stored_file(
    catalogued: MakeClient, upload_dir: Path
) -> None:
    client = await catalogued(dedupe="reuse")
    [stored] = await upload_ok(client, ("a.jpg", JPEG))
    items = await upload_ok(client, ("again.jpg", JPEG), ("new.png", PNG), ("twin.png", PNG))
    assert items[0] == {**stored, "duplicate": True}
    assert items[1]["duplicate"] is False
    assert items[2] == {**items[1], "duplicate": True}  # a twin within the one upload
    assert stored_files(upload_dir) == ["a.jpg", "new.png"]  # the duplicates never published
    await eventually(lambda: temp_files(upload_dir) == [])  # removed after the answer
    assert len(await list_all(client)) == 2


async def test_dedupe_reject_refuses_the_upload_naming_the_file(
    catalogued: MakeClient, upload_dir: Path
) -> None:
    client = await catalogued(dedupe="reject")
    await upload_ok(client, ("a.jpg", JPEG))
    response = await upload(client, ("new.png", PNG), ("again.jpg", JPEG))
    body = await error_body(response, 409)
    assert body["file"] == "again.jpg"
    assert body["index"] == 1
    assert "'again.jpg' is stored already, as 'a.jpg'" in body["detail"]
    assert stored_files(upload_dir) == ["a.jpg"]  # all or nothing, as any refusal
    assert len(await list_all(client)) == 1


@pytest.mark.parametrize("dedupe", ["reuse", "reject"])
async def test_dedupe_finds_large_files_hashed_while_the_next_ones_arrive(
    catalogued: MakeClient, upload_dir: Path, dedupe: str
) -> None:
    """Photos of several reads each, hashed on the hashing thread as they arrive and waited
    for only once the last is in: DEDUPE still decides on their digests."""
    client = await catalogued(dedupe=dedupe)
    photos = [JPEG + os.urandom(300 * KIB + n) for n in range(3)]
    [stored] = await upload_ok(client, ("a.jpg", photos[0]))
    files = [("b.jpg", photos[1]), ("c.jpg", photos[2]), ("again.jpg", photos[0])]
    files.append(("twin.jpg", photos[2]))
    response = await upload_each(client, files)
    items = (await response.json())["data"]
    assert [i.get("sha256") for i in items[:2]] == [
        hashlib.sha256(p).hexdigest() for p in photos[1:]
    ]
    if dedupe == "reuse":
        assert items[2] == {**stored, "duplicate": True}
        assert items[3] == {**items[1], "duplicate": True}
    else:
        assert [i["error"]["status"] for i in items[2:]] == [409, 409]
        assert "as 'a.jpg'" in items[2]["error"]["detail"]
        assert "earlier in this upload" in items[3]["error"]["detail"]
    assert stored_files(upload_dir) == ["a.jpg", "b.jpg", "c.jpg"]
    assert len(await list_all(client)) == 3


# ----------------------------------------------------------------------------- per-file


@pytest.mark.parametrize("position", [0, 2, 4], ids=["start", "middle", "end"])
@pytest.mark.parametrize(
    ("bad", "status"),
    [
        (("bad.png", JPEG), 415),
        (("bad.gif", b"GIF89a"), 415),
        (("big.jpg", JPEG + bytes(300 * KIB)), 413),
    ],
    ids=["wrong-bytes", "not-allowed", "too-large"],
)
async def test_atomic_false_stores_each_good_file_and_says_why_the_bad_one_was_refused(
    catalogued: MakeClient,
    upload_dir: Path,
    position: int,
    bad: tuple[str, bytes],
    status: int,
) -> None:
    client = await catalogued(max_file_size=200 * KIB)
    good = [(f"{n}.jpg", jpeg(n)) for n in range(4)]
    files = [*good]
    files.insert(position, bad)
    response = await upload_each(client, files)
    payload = await response.json()
    assert response.status == 200, payload
    assert payload["message"] == "Uploaded 4 of 5 files"
    items = payload["data"]
    refused = items.pop(position)
    assert refused["original_filename"] == bad[0]
    assert refused["error"]["status"] == status
    assert bad[0] in refused["error"]["detail"]
    assert [i["stored_filename"] for i in items] == [name for name, _ in good]
    assert stored_files(upload_dir) == sorted(name for name, _ in good)
    await eventually(lambda: temp_files(upload_dir) == [])  # the refused one: after the answer
    assert len(await list_all(client)) == 4


async def test_atomic_false_with_dedupe_reject_refuses_only_the_duplicate(
    catalogued: MakeClient, upload_dir: Path
) -> None:
    client = await catalogued(dedupe="reject")
    await upload_ok(client, ("a.jpg", JPEG))
    response = await upload_each(client, [("again.jpg", JPEG), ("new.png", PNG)])
    items = (await response.json())["data"]
    assert items[0]["error"]["status"] == 409
    assert items[1]["stored_filename"] == "new.png"
    assert stored_files(upload_dir) == ["a.jpg", "new.png"]


async def test_a_malformed_body_still_refuses_the_whole_per_file_upload(
    catalogued: MakeClient, upload_dir: Path
) -> None:
    client = await catalogued()
    body = files_body(("a.jpg", JPEG), ("b.jpg", jpeg(1)))
    response = await post_body(client, body[:-60], query="?atomic=false")
    await expect_error(response, 400)
    assert stored_files(upload_dir) == []


async def test_atomic_must_be_true_or_false(catalogued: MakeClient) -> None:
    client = await catalogued()
    response = await post_body(client, files_body(("a.jpg", JPEG)), query="?atomic=maybe")
    assert "atomic" in await expect_error(response, 400)


@pytest.mark.parametrize(
    ("files", "status", "file", "index"),
    [
        ([("a.jpg", JPEG), ("notes.txt", b"hello")], 415, "notes.txt", 1),
        ([("fake.png", JPEG)], 415, "fake.png", 0),
        (
            [("a.jpg", JPEG), ("b.jpg", JPEG), ("big.jpg", JPEG + bytes(300 * KIB))],
            413,
            "big.jpg",
            2,
        ),
    ],
)
async def test_a_refused_upload_names_the_file_and_its_index(
    catalogued: MakeClient,
    files: list[tuple[str, bytes]],
    status: int,
    file: str,
    index: int,
) -> None:
    client = await catalogued(max_file_size=200 * KIB)
    body = await error_body(await upload(client, *files), status)
    assert (body["file"], body["index"]) == (file, index)
