"""Crash-safe publish (clustr_aio.storage.journal): a batch's journal lives exactly from before
its first link to its seal (after the caller's commit), and the start-up sweep rolls back the
batches of a dead process that were not sealed, removing only hard links to their own
temporary files."""

from __future__ import annotations

import os
from pathlib import Path

from clustr_aio.storage import journal
from clustr_aio.storage.local import INCOMING_DIR, LocalStorage
from tests.conftest import JPEG, PNG, stored_files
from tests.storage.test_local import store


def journals(folder: Path) -> list[Path]:
    return sorted((folder / INCOMING_DIR).rglob(f"*{journal.JOURNAL_SUFFIX}"))


def dead_dir(folder: Path, name: str = "dead-process") -> Path:
    directory = folder / INCOMING_DIR / name
    directory.mkdir(parents=True)
    (directory / ".lock").touch()  # nobody holds it: its process is gone
    return directory


def temporary(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


async def test_a_publish_journals_before_linking_and_seals_after(upload_dir: Path) -> None:
    storage = LocalStorage(upload_dir)
    await storage.open()
    seen: list[tuple[str, list[Path], list[str]]] = []
    storage.pause = lambda point: seen.append(
        (point, journals(upload_dir), stored_files(upload_dir))
    )
    try:
        batch = storage.batch()
        await store(batch, "a.jpg", JPEG)
        await store(batch, "b.png", PNG)
        assert await batch.publish() == ["a.jpg", "b.png"]
        assert len(journals(upload_dir)) == 1  # the caller's commit comes first
        await batch.seal()
        assert journals(upload_dir) == []
    finally:
        await storage.close()
    points = [point for point, _, _ in seen]
    assert points == ["link 0", "link 1", "linked", "seal", "sealed"]
    assert [len(found) for _, found, _ in seen] == [1, 1, 1, 1, 0]  # the journal, to the seal
    assert [names for _, _, names in seen][:3] == [[], ["a.jpg"], ["a.jpg", "b.png"]]


async def test_the_sweep_rolls_back_a_journaled_batch_and_touches_nothing_else(
    upload_dir: Path,
) -> None:
    dead = dead_dir(upload_dir)
    # Batch "B" was being published: B.0 linked as a.jpg and, a name being taken, as x-1.jpg
    # for B.1; B.2 not linked yet. Its journal is there.
    (upload_dir / "x.jpg").write_bytes(b"someone else's x")
    b0, b1, b2 = (temporary(dead, f"B.{n}", JPEG + bytes([n])) for n in range(3))
    os.link(b0, upload_dir / "a.jpg")
    os.link(b1, upload_dir / "x-1.jpg")
    journal.begin(dead, "B", [(b0, "a.jpg"), (b1, "x.jpg"), (b2, "c.jpg")], durable=False)
    # Batch "C" was sealed when the process died (its temporary files not all removed yet):
    # its files stay published.
    c0 = temporary(dead, "C.0", PNG)
    os.link(c0, upload_dir / "committed.png")
    (dead / f"C{journal.SEALED_SUFFIX}").touch()
    # Batch "D", of one file, was linked but not sealed: its temporary file is its journal.
    os.link(temporary(dead, "D.0", JPEG + b"D"), upload_dir / "d.jpg")
    # B had also linked b.jpg, which someone replaced since with a file of their own.
    b3 = temporary(dead, "B.3", JPEG + b"3")
    os.link(b3, upload_dir / "b.jpg")
    (upload_dir / "b.jpg").unlink()
    (upload_dir / "b.jpg").write_bytes(b"a later b.jpg")
    untouched = {"x.jpg": b"someone else's x", "b.jpg": b"a later b.jpg", "committed.png": PNG}

    storage = LocalStorage(upload_dir)
    await storage.open()
    try:
        assert not dead.exists()
        assert stored_files(upload_dir) == sorted(untouched)
        for name, data in untouched.items():
            assert (upload_dir / name).read_bytes() == data
    finally:
        await storage.close()


def test_a_one_file_batch_not_sealed_is_rolled_back_without_a_journal(upload_dir: Path) -> None:
    dead = dead_dir(upload_dir)
    os.link(temporary(dead, "B.0", JPEG), upload_dir / "a.jpg")
    (upload_dir / "planted.jpg").write_bytes(JPEG)  # an operator's: no temporary file links it
    assert journal.roll_back(dead, upload_dir) == ["a.jpg"]
    assert stored_files(upload_dir) == ["planted.jpg"]


def test_a_sealed_batch_is_never_rolled_back(upload_dir: Path) -> None:
    dead = dead_dir(upload_dir)
    b0, b1 = (temporary(dead, f"B.{n}", JPEG + bytes([n])) for n in range(2))
    os.link(b0, upload_dir / "a.jpg")
    os.link(b1, upload_dir / "b.jpg")
    marker = journal.seal(
        journal.begin(dead, "B", [(b0, "a.jpg"), (b1, "b.jpg")], durable=False), durable=False
    )
    b0.unlink()  # killed while the seal removed the temporary files: one is left
    assert journal.roll_back(dead, upload_dir) == []
    assert stored_files(upload_dir) == ["a.jpg", "b.jpg"]
    journal.forget(marker, durable=True)
    assert not marker.exists()


def test_roll_back_before_the_first_link_removes_nothing(upload_dir: Path) -> None:
    dead = dead_dir(upload_dir)
    b0 = temporary(dead, "B.0", JPEG)
    (upload_dir / "a.jpg").write_bytes(JPEG)  # same bytes, another file
    journal.begin(dead, "B", [(b0, "a.jpg")], durable=False)
    assert journal.roll_back(dead, upload_dir) == []
    assert stored_files(upload_dir) == ["a.jpg"]


def test_the_pause_hook_is_off_unless_the_test_variable_names_points() -> None:
    assert journal.pause_points({}) is None
    assert journal.pause_points({journal.PAUSE_VARIABLE: " , "}) is None
    assert journal.pause_points({journal.PAUSE_VARIABLE: "seal"}) is not None
