"""Stored names through the real server: hostile originals, numbering, never overwriting."""

from __future__ import annotations

import asyncio
import unicodedata
from pathlib import Path

import pytest

from clustr_aio.domain.names import FALLBACK_STEM, MAX_NAME_BYTES
from tests.conftest import JPEG, PNG, WEBP, Client, stored_files, temp_files
from tests.http.helpers import Part, multipart_body, post_body, upload_ok


def assert_stored_safely(upload_dir: Path, name: str, data: bytes) -> None:
    """``name`` is a plain visible segment, directly in the upload folder, holding ``data``."""
    assert name
    assert not name.startswith(".")
    assert "/" not in name
    assert "\\" not in name
    assert ".." not in name.split(".")[:1]
    assert all(unicodedata.category(c)[0] != "C" for c in name), ascii(name)
    assert len(name.encode()) <= MAX_NAME_BYTES
    assert unicodedata.is_normalized("NFC", name)
    stem, dot, ext = name.rpartition(".")
    assert dot
    assert stem
    assert ext == ext.lower()
    path = upload_dir / name
    assert path.parent == upload_dir
    assert path.read_bytes() == data


def assert_only_the_upload_folder_was_written(tmp_path: Path) -> None:
    # conftest's make_settings writes empty.env beside the folder; nothing else may appear.
    assert sorted(p.name for p in tmp_path.iterdir()) in (["uploads"], ["empty.env", "uploads"])


HOSTILE: dict[str, tuple[str, str]] = {
    # id: (Content-Disposition filename parameter as sent, stored name)
    "parent-dirs": ('filename="../../x.jpg"', "x.jpg"),
    "absolute": ('filename="/etc/passwd.jpg"', "passwd.jpg"),
    "escaped-backslash": ('filename="a\\\\b.png"', "b.png"),  # a\b.png, RFC 2616 quoted-pair
    "windows-path-rfc5987": ("filename*=UTF-8''C%3A%5Cx%5Cy.jpg", "y.jpg"),
    "windows-parent-dirs": ("filename*=UTF-8''..%5C..%5Cwin.jpg", "win.jpg"),
    "nul-and-newline": ("filename*=UTF-8''a%00b%0Ac%0D.jpg", "abc.jpg"),
    "nfd": ('filename="cafe\u0301.jpg"', "caf\u00e9.jpg"),
    "nfd-rfc5987": ("filename*=UTF-8''cafe%CC%81.jpg", "caf\u00e9.jpg"),
    "rtl-override": ('filename="invoice\u202egpj.exe.png"', "invoicegpj.exe.png"),
    "rtl-only-stem": ('filename="\u202e.jpg"', "file.jpg"),
    "hidden": ('filename=".hidden.jpg"', "hidden.jpg"),
    "dots-and-spaces": ('filename=" . .photo. .jpg"', "photo.jpg"),
    "windows-reserved-chars": ('filename="a:b*c?d|e<f>g.jpg"', "a_b_c_d_e_f_g.jpg"),
    "percent-escapes-kept-literally": ('filename="%2e%2e%2fx.jpg"', "%2e%2e%2fx.jpg"),
    "upper-case-extension": ('filename="SHOUT.JPEG"', "SHOUT.jpeg"),
}


@pytest.mark.parametrize(("disposition", "expected"), HOSTILE.values(), ids=HOSTILE.keys())
async def test_hostile_names_are_stored_as_one_safe_segment(
    client: Client, upload_dir: Path, tmp_path: Path, disposition: str, expected: str
) -> None:
    data = PNG if expected.endswith(".png") else JPEG
    body = multipart_body(Part(data, raw_disposition=f'form-data; name="files"; {disposition}'))
    response = await post_body(client, body)
    payload = await response.json()
    assert response.status == 200, payload
    [item] = payload["data"]
    assert item["stored_filename"] == expected
    assert_stored_safely(upload_dir, expected, data)
    assert stored_files(upload_dir) == [expected]
    assert_only_the_upload_folder_was_written(tmp_path)


async def test_original_filename_is_reported_as_sent(client: Client) -> None:
    [item] = await upload_ok(client, ("../../x.jpg", JPEG))
    assert item["original_filename"] == "../../x.jpg"
    assert item["stored_filename"] == "x.jpg"


@pytest.mark.parametrize("char", ["a", "\u00e9", "\u6f22", "\U0001f4f7"])
async def test_300_character_names_are_cut_to_255_bytes(
    client: Client, upload_dir: Path, char: str
) -> None:
    original = char * 300 + ".webp"
    [item] = await upload_ok(client, (original, WEBP))
    name = item["stored_filename"]
    assert name.endswith(".webp")
    assert_stored_safely(upload_dir, name, WEBP)
    # Taken: the numbered alternative still fits.
    [again] = await upload_ok(client, (original, WEBP))
    assert again["stored_filename"] != name
    assert_stored_safely(upload_dir, again["stored_filename"], WEBP)


async def test_taken_names_get_numbered_alternatives(client: Client, upload_dir: Path) -> None:
    contents = [JPEG + bytes([i]) for i in range(4)]
    names = [
        (await upload_ok(client, ("photo.jpg", data)))[0]["stored_filename"] for data in contents
    ]
    assert names == ["photo.jpg", "photo-1.jpg", "photo-2.jpg", "photo-3.jpg"]
    for name, data in zip(names, contents, strict=True):
        assert (upload_dir / name).read_bytes() == data


async def test_pre_existing_files_are_never_overwritten(client: Client, upload_dir: Path) -> None:
    (upload_dir / "photo.jpg").write_bytes(b"precious")
    (upload_dir / "photo-1.jpg").write_bytes(b"also precious")
    (upload_dir / "photo-2.jpg").mkdir()  # a directory occupies the name too
    [item] = await upload_ok(client, ("photo.jpg", JPEG))
    assert item["stored_filename"] == "photo-3.jpg"
    assert (upload_dir / "photo.jpg").read_bytes() == b"precious"
    assert (upload_dir / "photo-1.jpg").read_bytes() == b"also precious"
    assert (upload_dir / "photo-2.jpg").is_dir()
    assert (upload_dir / "photo-3.jpg").read_bytes() == JPEG


async def test_a_name_freed_after_numbering_is_not_overwritten_later(
    client: Client, upload_dir: Path
) -> None:
    await upload_ok(client, ("a.jpg", JPEG))
    [second] = await upload_ok(client, ("a.jpg", JPEG + b"2"))
    assert second["stored_filename"] == "a-1.jpg"
    # Someone puts a file at a name the server has not handed out yet.
    (upload_dir / "a-2.jpg").write_bytes(b"placed by hand")
    [third] = await upload_ok(client, ("a.jpg", JPEG + b"3"))
    assert third["stored_filename"] == "a-3.jpg"
    assert (upload_dir / "a-2.jpg").read_bytes() == b"placed by hand"


async def test_same_name_several_times_in_one_request(client: Client, upload_dir: Path) -> None:
    contents = [JPEG + bytes([i]) * (i + 1) for i in range(5)]
    items = await upload_ok(client, *(("same.jpg", data) for data in contents))
    names = [item["stored_filename"] for item in items]
    assert names == ["same.jpg", "same-1.jpg", "same-2.jpg", "same-3.jpg", "same-4.jpg"]
    for name, data in zip(names, contents, strict=True):
        assert (upload_dir / name).read_bytes() == data


async def test_concurrent_uploads_of_the_same_name_all_survive(
    client: Client, upload_dir: Path
) -> None:
    # 20 requests of one file each, and one request with the name 5 times, all at once; every
    # content is distinct (and large enough to span several reads) so a mix-up would show.
    singles = [JPEG + bytes([i]) * 200_000 for i in range(20)]
    batch = [JPEG + bytes([100 + i]) * 150_000 for i in range(5)]
    requests = [upload_ok(client, ("same.jpg", data)) for data in singles]
    requests.append(upload_ok(client, *(("same.jpg", data) for data in batch)))
    results = await asyncio.gather(*requests)

    sent = [*singles, *batch]
    items = [item for result in results for item in result]
    names = [item["stored_filename"] for item in items]
    assert len(set(names)) == 25
    assert set(names) == {"same.jpg"} | {f"same-{n}.jpg" for n in range(1, 25)}
    for item, data in zip(items, sent, strict=True):
        assert (upload_dir / item["stored_filename"]).read_bytes() == data
        assert item["file_size"] == len(data)
    assert len(stored_files(upload_dir)) == 25
    assert temp_files(upload_dir) == []


async def test_one_batch_keeps_its_order_when_numbered(client: Client, upload_dir: Path) -> None:
    await upload_ok(client, ("b.png", PNG))
    items = await upload_ok(client, ("a.jpg", JPEG), ("b.png", PNG + b"new"), ("c.webp", WEBP))
    assert [i["stored_filename"] for i in items] == ["a.jpg", "b-1.png", "c.webp"]
    assert (upload_dir / "b-1.png").read_bytes() == PNG + b"new"


@pytest.mark.parametrize("original", [".jpg", "..jpg", "...JPG", "\u202e.jpg"])
async def test_a_name_that_is_only_an_extension_is_stored_under_the_neutral_stem(
    client: Client, upload_dir: Path, original: str
) -> None:
    """As the original's ``filename.rsplit(".", 1)[1]`` check: ".jpg" has the extension jpg."""
    [first] = await upload_ok(client, (original, JPEG))
    [second] = await upload_ok(client, (original, JPEG + b"2"))
    assert first["original_filename"] == original
    assert first["content_type"] == "image/jpeg"
    assert [first["stored_filename"], second["stored_filename"]] == [
        f"{FALLBACK_STEM}.jpg",
        f"{FALLBACK_STEM}-1.jpg",
    ]
    assert_stored_safely(upload_dir, f"{FALLBACK_STEM}.jpg", JPEG)
    assert_stored_safely(upload_dir, f"{FALLBACK_STEM}-1.jpg", JPEG + b"2")


async def test_extension_only_names_of_several_types_in_one_batch(
    client: Client, upload_dir: Path
) -> None:
    items = await upload_ok(client, (".jpg", JPEG), ("...PNG", PNG), ("..jpg", JPEG + b"2"))
    assert [i["stored_filename"] for i in items] == [
        f"{FALLBACK_STEM}.jpg",
        f"{FALLBACK_STEM}.png",
        f"{FALLBACK_STEM}-1.jpg",
    ]
    assert stored_files(upload_dir) == sorted(i["stored_filename"] for i in items)


async def test_unescaped_windows_path_keeps_its_last_segment(client: Client) -> None:
    body = multipart_body(Part(JPEG, "C:\\Users\\me\\y.jpg"))
    response = await post_body(client, body)
    assert (await response.json())["data"][0]["stored_filename"] == "y.jpg"
