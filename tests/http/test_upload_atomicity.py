"""All or nothing: a refused batch leaves no published file and no temporary file behind."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from clustr_aio.catalog.factory import SQLITE_FILE
from clustr_aio.storage.local import INCOMING_DIR
from tests.conftest import JPEG, PNG, WEBP, Client, assert_nothing_stored, stored_files
from tests.http.conftest import MakeClient
from tests.http.helpers import expect_error, files_body, post_body, upload, upload_ok

KIB = 1024
GOOD = [("a.jpg", JPEG), ("b.png", PNG + bytes(300 * KIB)), ("c.webp", WEBP)]
"""b.png spans more than one read and write; the bad file goes before, between or after."""

BAD: dict[str, tuple[tuple[str, bytes], int]] = {
    "wrong-magic": (("bad.png", JPEG), 415),
    "not-allowed": (("bad.gif", b"GIF89a" + bytes(10)), 415),
    "empty": (("bad.jpg", b""), 415),
    "too-large": (("bad.jpg", JPEG + bytes(2 * 1024 * KIB)), 413),
}


@pytest.mark.parametrize("position", [0, 1, 2, 3], ids=["first", "second", "third", "last"])
@pytest.mark.parametrize(("bad", "status"), BAD.values(), ids=BAD.keys())
async def test_one_bad_file_keeps_the_whole_batch_out(
    make_client: MakeClient,
    upload_dir: Path,
    position: int,
    bad: tuple[str, bytes],
    status: int,
) -> None:
    client = await make_client(max_file_size=2 * 1024 * KIB)
    files = [*GOOD]
    files.insert(position, bad)
    await expect_error(await upload(client, *files), status)
    assert_nothing_stored(upload_dir)
    # The folder is still usable, and the same good files go through on their own.
    await upload_ok(client, *GOOD)
    assert stored_files(upload_dir) == ["a.jpg", "b.png", "c.webp"]


async def test_truncated_body_after_good_files_keeps_nothing(
    client: Client, upload_dir: Path
) -> None:
    body = files_body(*GOOD)
    await expect_error(await post_body(client, body[: len(body) - 100]), 400)
    assert_nothing_stored(upload_dir)


async def test_a_refused_batch_does_not_touch_files_already_there(
    client: Client, upload_dir: Path
) -> None:
    (upload_dir / "a.jpg").write_bytes(b"kept")
    await expect_error(await upload(client, ("a.jpg", JPEG), ("x.png", JPEG)), 415)
    assert stored_files(upload_dir) == ["a.jpg"]
    assert (upload_dir / "a.jpg").read_bytes() == b"kept"


async def test_temporary_files_live_in_the_hidden_incoming_folder(
    client: Client, upload_dir: Path
) -> None:
    await upload_ok(client, *GOOD)
    entries = sorted(e for e in os.listdir(upload_dir) if not e.startswith(SQLITE_FILE))
    assert entries == [INCOMING_DIR, "a.jpg", "b.png", "c.webp"]


@pytest.mark.parametrize("fsync", [True, False], ids=["fsync", "no-fsync"])
async def test_fsync_setting_decides_whether_files_are_flushed(
    make_client: MakeClient,
    upload_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    fsync: bool,
) -> None:
    flushed: list[int] = []
    real_fsync: Callable[[int], None] = os.fsync

    def counting_fsync(fd: int) -> None:
        flushed.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    client = await make_client(fsync=fsync)
    items = await upload_ok(client, *GOOD)
    for item, (_, data) in zip(items, GOOD, strict=True):
        assert (upload_dir / item["stored_filename"]).read_bytes() == data
    # With FSYNC: each of the 3 files, the batch's journal entry, the folder once for the
    # batch; after the catalog's commit, the seal (the journal renamed), then the temporary
    # files' removal before the seal's marker goes.
    assert len(flushed) == (7 if fsync else 0)
    assert stored_files(upload_dir) == ["a.jpg", "b.png", "c.webp"]
