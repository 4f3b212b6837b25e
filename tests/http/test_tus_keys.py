"""tus uploads with AUTH=keys through a real server and real keys: an upload is its creating
key's owner's (another owner's requests get 404, as for files; its file is catalogued as that
owner's, DEDUPE among theirs), and its bytes count toward the key's quota — at creation from
Upload-Length (507 before any byte, nothing made), and, while the length is deferred, as it
becomes known and as the bytes arrive."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from clustr_aio.auth.keys import create_key
from clustr_aio.web.keys import CATALOG
from tests.conftest import JPEG, Client, stored_files
from tests.http.conftest import MakeClient
from tests.http.test_tus import TUS, create, created, detail, metadata, patch


def jpeg(size: int) -> bytes:
    """A real JPEG of ``size`` bytes (the zeros after its end are stored as they are)."""
    return JPEG + bytes(size - len(JPEG))


def uploads(upload_dir: Path) -> list[Path]:
    folder = upload_dir / ".tus"
    return list(folder.iterdir()) if folder.exists() else []


async def bearer(
    client: Client, name: str, scopes: str = "upload,read", *, quota: int | None = None
) -> str:
    key, _ = await create_key(client.app[CATALOG], name, scopes, quota=quota)
    return f"Bearer {key}"


@pytest.fixture
async def keyed(make_client: MakeClient) -> Client:
    return await make_client(auth="keys", fsync=False)


async def test_an_upload_is_found_by_its_owner_only_and_its_file_is_theirs(
    keyed: Client,
) -> None:
    alice = await bearer(keyed, "alice")
    bob = await bearer(keyed, "bob")
    admin = await bearer(keyed, "root", "admin")
    photo = jpeg(5000)
    url = await created(keyed, len(photo), Authorization=alice)
    assert (await patch(keyed, url, 0, photo[:2000], Authorization=alice)).status == 204

    # Another owner: as if there were no such upload, whatever the method.
    peek = await keyed.head(url, headers={**TUS, "Authorization": bob})
    assert peek.status == 404
    steal = await patch(keyed, url, 2000, photo[2000:], Authorization=bob)
    assert steal.status == 404
    assert await detail(steal) == "no upload has this id"
    end = await keyed.delete(url, headers={**TUS, "Authorization": bob})
    assert end.status == 404
    override = await keyed.post(
        url, headers={**TUS, "Authorization": bob, "X-HTTP-Method-Override": "DELETE"}
    )
    assert override.status == 404
    # Nothing of it changed; an admin sees it, as it sees every owner's files.
    state = await keyed.head(url, headers={**TUS, "Authorization": admin})
    assert state.status == 200
    assert state.headers["Upload-Offset"] == "2000"

    done = await patch(keyed, url, 2000, photo[2000:], Authorization=alice)
    assert done.status == 204, await done.text()
    file_id = done.headers["Clustr-File-Id"]
    record = await keyed.app[CATALOG].get(file_id)
    assert record is not None
    assert record.owner == "alice"
    assert (
        await keyed.get(f"/api/files/{file_id}", headers={"Authorization": alice})
    ).status == 200
    assert (await keyed.get(f"/api/files/{file_id}", headers={"Authorization": bob})).status == 404
    assert (await keyed.head(url, headers={**TUS, "Authorization": bob})).status == 404


async def test_a_final_concatenates_its_owners_parts_only(keyed: Client) -> None:
    alice = await bearer(keyed, "alice")
    bob = await bearer(keyed, "bob")
    part = await created(keyed, len(JPEG), Upload_Concat="partial", Authorization=alice)
    assert (await patch(keyed, part, 0, JPEG, Authorization=alice)).status == 204
    theirs = await create(keyed, None, Upload_Concat=f"final;{part}", Authorization=bob)
    assert theirs.status == 400
    assert "does not exist" in await detail(theirs)
    mine = await create(keyed, None, Upload_Concat=f"final;{part}", Authorization=alice)
    assert mine.status == 201, await mine.text()
    record = await keyed.app[CATALOG].get(mine.headers["Clustr-File-Id"])
    assert record is not None
    assert record.owner == "alice"


async def test_dedupe_looks_among_the_owners_files(make_client: MakeClient) -> None:
    client = await make_client(auth="keys", fsync=False, dedupe="reuse")
    alice = await bearer(client, "alice")
    bob = await bearer(client, "bob")
    photo = jpeg(3000)

    async def send(key: str) -> str:
        url = await created(client, len(photo), Authorization=key)
        done = await patch(client, url, 0, photo, Authorization=key)
        assert done.status == 204, await done.text()
        return done.headers["Clustr-File-Id"]

    first = await send(alice)
    assert await send(bob) != first  # the same bytes, another owner: stored for bob
    assert await send(alice) == first  # alice's own: the file she has


async def test_quota_is_checked_at_creation_before_any_byte(
    make_client: MakeClient, database_url: str | None, upload_dir: Path
) -> None:
    client = await make_client(auth="keys", fsync=False, database_url=database_url)
    key = await bearer(client, "q", quota=5000)
    over = await create(client, 5001, Authorization=key)
    assert over.status == 507
    assert await detail(over) == (
        "storage quota exceeded: owner 'q' may store 5000 bytes and has 5000 left, not enough"
        " for 5001 bytes; nothing of this upload was kept"
    )
    # creation-with-upload: refused from its headers, its body never kept.
    with_body = await client.post(
        "/api/tus/",
        headers={
            **TUS,
            "Authorization": key,
            "Upload-Length": "6000",
            "Upload-Metadata": metadata(filename="b.jpg"),
            "Content-Type": "application/offset+octet-stream",
        },
        data=jpeg(6000),
    )
    assert with_body.status == 507
    assert uploads(upload_dir) == []

    url = await created(client, 5000, Authorization=key)  # reserved whole, from now on
    assert (await create(client, 1, Authorization=key)).status == 507
    done = await patch(client, url, 0, jpeg(5000), Authorization=key)
    assert done.status == 204, await done.text()
    assert await client.app[CATALOG].usage("q") == 5000  # the file; its reservation let go
    assert (await create(client, 1, Authorization=key)).status == 507
    assert stored_files(upload_dir) == ["photo.jpg"]
    metrics = await (await client.get("/metrics")).text()
    assert 'clustr_auth_refusals_total{reason="quota_exceeded"} 4.0' in metrics


async def test_uploads_racing_for_the_last_bytes_do_not_all_get_them(
    make_client: MakeClient, database_url: str | None
) -> None:
    client = await make_client(auth="keys", fsync=False, database_url=database_url)
    size = 20_000
    key = await bearer(client, "racer", quota=2 * size + size // 2)  # room for two of five
    answers = await asyncio.gather(*(create(client, size, Authorization=key) for _ in range(5)))
    assert sorted(a.status for a in answers) == [201, 201, 507, 507, 507]


async def test_deferred_length_is_checked_when_known_and_as_bytes_arrive(
    keyed: Client, upload_dir: Path
) -> None:
    key = await bearer(keyed, "later", quota=5000)
    photo = jpeg(4500)
    url = await created(keyed, None, Upload_Defer_Length="1", Authorization=key)
    assert (await patch(keyed, url, 0, photo[:3000], Authorization=key)).status == 204
    assert await keyed.app[CATALOG].usage("later") == 3000  # what arrived, reserved

    # Still deferred: more bytes than the quota has room for; the chunk is not kept.
    flood = await patch(keyed, url, 3000, bytes(2001), Authorization=key)
    assert flood.status == 507
    assert "nothing of this request's body was kept" in await detail(flood)
    state = await keyed.head(url, headers={**TUS, "Authorization": key})
    assert state.headers["Upload-Offset"] == "3000"

    # The length, once said, is reserved whole or refused before the body.
    too_long = await patch(keyed, url, 3000, photo[3000:], Upload_Length="5001", Authorization=key)
    assert too_long.status == 507
    state = await keyed.head(url, headers={**TUS, "Authorization": key})
    assert state.headers["Upload-Offset"] == "3000"
    assert state.headers["Upload-Defer-Length"] == "1"

    done = await patch(
        keyed, url, 3000, photo[3000:], Upload_Length=str(len(photo)), Authorization=key
    )
    assert done.status == 204, await done.text()
    assert await keyed.app[CATALOG].usage("later") == len(photo)
    assert (upload_dir / "photo.jpg").read_bytes() == photo


async def test_termination_and_expiry_give_the_room_back(
    make_client: MakeClient, upload_dir: Path
) -> None:
    client = await make_client(auth="keys", fsync=False, tus_expiry=2.0)
    key = await bearer(client, "room", quota=5000)
    url = await created(client, 5000, Authorization=key)
    assert await client.app[CATALOG].usage("room") == 5000
    assert (await client.delete(url, headers={**TUS, "Authorization": key})).status == 204
    assert await client.app[CATALOG].usage("room") == 0

    await created(client, 5000, Authorization=key)
    assert (await create(client, 5000, Authorization=key)).status == 507
    for _ in range(200):  # expired, then swept: its reservation goes with it
        if not uploads(upload_dir) and await client.app[CATALOG].usage("room") == 0:
            break
        await asyncio.sleep(0.05)
    assert await client.app[CATALOG].usage("room") == 0
    assert (await create(client, 5000, Authorization=key)).status == 201
