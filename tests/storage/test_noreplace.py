"""Renaming without overwriting (clustr_aio.storage.noreplace), with renameat2 and without."""

from __future__ import annotations

from pathlib import Path

import pytest

from clustr_aio.storage import noreplace


@pytest.fixture(params=["renameat2", "link and unlink"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "link and unlink":
        monkeypatch.setattr(noreplace, "_renameat2", None)  # as on a system without it
    elif noreplace._renameat2 is None:
        pytest.skip("this system has no renameat2")
    return str(request.param)


def test_the_file_gets_the_new_name_and_loses_the_old(tmp_path: Path, way: str) -> None:
    source, target = tmp_path / "a", tmp_path / "b"
    source.write_bytes(b"bytes")
    noreplace.rename_noreplace(str(source), str(target))
    assert not source.exists()
    assert target.read_bytes() == b"bytes"
    assert target.stat().st_nlink == 1


def test_an_existing_name_is_never_replaced(tmp_path: Path, way: str) -> None:
    source, target = tmp_path / "a", tmp_path / "b"
    source.write_bytes(b"new")
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        noreplace.rename_noreplace(str(source), str(target))
    assert target.read_bytes() == b"old"
    assert source.read_bytes() == b"new"


def test_a_missing_source_is_file_not_found(tmp_path: Path, way: str) -> None:
    with pytest.raises(FileNotFoundError):
        noreplace.rename_noreplace(str(tmp_path / "none"), str(tmp_path / "b"))
