"""Original file names → safe stored names (clustr_aio.domain.names)."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from clustr_aio.domain import names
from clustr_aio.domain.names import (
    FALLBACK_STEM,
    MAX_NAME_BYTES,
    basename,
    extension_of,
    numbered,
    safe_name,
)


def assert_safe(name: str) -> None:
    """What every stored name must be: one plain, visible, bounded path segment."""
    assert name
    assert name not in (".", "..")
    assert not name.startswith(".")
    assert "/" not in name
    assert "\\" not in name
    assert "\x00" not in name
    assert all(unicodedata.category(c)[0] != "C" for c in name), ascii(name)
    assert name == name.strip()
    assert len(name.encode()) <= MAX_NAME_BYTES
    assert unicodedata.is_normalized("NFC", name)
    _stem, dot, ext = name.rpartition(".")
    if dot:
        assert ext == ext.lower()


@pytest.mark.parametrize(
    ("original", "expected"),
    [
        ("photo.jpg", "photo.jpg"),
        ("Photo.JPG", "Photo.jpg"),
        ("my holiday photo.jpeg", "my holiday photo.jpeg"),
        ("../../x.jpg", "x.jpg"),
        ("/etc/passwd.jpg", "passwd.jpg"),
        ("a\\b.png", "b.png"),
        ("C:\\x\\y.jpg", "y.jpg"),
        ("..\\..\\windows\\win.ini.png", "win.ini.png"),
        (".hidden.jpg", "hidden.jpg"),
        # A name that is only an extension keeps it, under the neutral stem.
        (".jpg", f"{FALLBACK_STEM}.jpg"),
        ("..jpg", f"{FALLBACK_STEM}.jpg"),
        ("...PNG", f"{FALLBACK_STEM}.png"),
        ("dir/.webp", f"{FALLBACK_STEM}.webp"),
        (".hidden", f"{FALLBACK_STEM}.hidden"),
        ("..", FALLBACK_STEM),
        ("", FALLBACK_STEM),
        ("/", FALLBACK_STEM),
        ("dir/", FALLBACK_STEM),
        ('a:b*c?d|e<f>g".jpg', "a_b_c_d_e_f_g_.jpg"),
        ("line\nbreak.jpg", "linebreak.jpg"),
        ("nul\x00byte.jpg", "nulbyte.jpg"),
        ("tab\there.jpg", "tabhere.jpg"),
        ("photo\u202egpj.exe.png", "photogpj.exe.png"),  # RTL override dropped
        ("zero\u200bwidth.jpg", "zerowidth.jpg"),
        ("cafe\u0301.jpg", "caf\u00e9.jpg"),  # NFD in, NFC out
        ("caf\u00e9.jpg", "caf\u00e9.jpg"),
        ("no\u00a0break\u2003space.jpg", "no break space.jpg"),
        ("  padded  .jpg", "padded.jpg"),
        (" . .dotted. .jpg", "dotted.jpg"),
        (". . .", FALLBACK_STEM),
        ("trailing dots...jpg", "trailing dots.jpg"),
        ("photo", "photo"),
        ("photo.", "photo"),
        ("archive.tar.gz", "archive.tar.gz"),
        # The extension survives when everything before it is stripped away.
        ("\u202e.jpg", f"{FALLBACK_STEM}.jpg"),
        (" .jpg", f"{FALLBACK_STEM}.jpg"),
        ("\u200b.png", f"{FALLBACK_STEM}.png"),
        ("\x01\x02.webp", f"{FALLBACK_STEM}.webp"),
        ("x.\u202ejpg", "x.jpg"),
    ],
)
def test_safe_name(original: str, expected: str) -> None:
    assert safe_name(original) == expected
    assert_safe(safe_name(original))


@pytest.mark.parametrize(
    ("original", "expected"),
    [
        ("a.jpg", "jpg"),
        ("a.JPG", "jpg"),
        ("a.tar.GZ", "gz"),
        ("../x.png", "png"),
        ("dir.png/x", ""),
        ("C:\\dir.png\\x", ""),
        ("photo", ""),
        ("photo.", ""),
        (".jpg", "jpg"),  # only an extension: it counts, as in the original's rsplit(".", 1)
        ("..jpg", "jpg"),
        ("...PNG", "png"),
        (".", ""),
        ("..", ""),
        (".hidden.jpg", "jpg"),
        ("a.jpg ", "jpg "),  # not trimmed: "jpg " is not an allowed extension
    ],
)
def test_extension_of(original: str, expected: str) -> None:
    assert extension_of(original) == expected


@pytest.mark.parametrize(
    "original",
    [
        "\u202e.jpg",
        " .jpg",
        ".jpg",
        "..JPG",
        "\u200b.png",
        "..\\.webp\\x.JPEG",
        "x.\u202ejpg",
        "a" * 300 + ".jpg",
        "\u00e9" * 300 + ".PNG",
    ],
)
def test_stored_name_keeps_the_checked_extension(original: str) -> None:
    """The extension the policy checked is the one the stored name ends with: a file accepted as
    .jpg is served as a JPEG, not as extension-less bytes."""
    ext = extension_of(original).replace("\u202e", "")
    assert ext
    assert safe_name(original).endswith("." + ext)


def test_basename_takes_either_separator() -> None:
    assert basename("a/b\\c/d.jpg") == "d.jpg"
    assert basename("d.jpg") == "d.jpg"
    assert basename("a/") == ""


@pytest.mark.parametrize("char", ["a", "\u00e9", "\u6f22", "\U0001f600"])
def test_long_names_are_cut_to_whole_characters_with_room_for_a_suffix(char: str) -> None:
    name = safe_name(char * 300 + ".jpeg")
    assert name.endswith(".jpeg")
    assert set(name.removesuffix(".jpeg")) == {char}
    assert len(name.encode()) <= MAX_NAME_BYTES - len("-99999")
    assert len(numbered(name, 99_999).encode()) <= MAX_NAME_BYTES


def test_long_extension_is_cut() -> None:
    name = safe_name("photo." + "x" * 300)
    assert len(name.encode()) <= MAX_NAME_BYTES
    assert name.startswith("photo.")


@pytest.mark.parametrize(
    ("name", "n", "expected"),
    [
        ("photo.jpg", 0, "photo.jpg"),
        ("photo.jpg", 1, "photo-1.jpg"),
        ("photo.jpg", 2, "photo-2.jpg"),
        ("archive.tar.gz", 3, "archive.tar-3.gz"),
        ("photo", 1, "photo-1"),
    ],
)
def test_numbered(name: str, n: int, expected: str) -> None:
    assert numbered(name, n) == expected


@given(st.text(max_size=400))
@example("e\u200d\u0301.jpg")  # a removed joiner leaves "e" + combining accent: re-compose
@example("\u037e.jpg")  # GREEK QUESTION MARK: NFC turns it into ";"
@example("\ud800.jpg")  # a lone surrogate cannot be encoded: it must go
@example(". .x")  # dots and spaces alternate: no leading dot may survive the trimming
@example("x.A.\x01")  # the extension cleans away: the rest's own extension is lower-cased
@example("." * 300)
@example("/" * 10 + "\\" * 10)
def test_any_string_becomes_a_safe_name(original: str) -> None:
    name = safe_name(original)
    assert_safe(name)
    assert safe_name(name) == name  # stable: storing a stored name keeps it


@given(st.text(max_size=300), st.integers(min_value=0, max_value=99_999))
def test_numbered_names_stay_safe(original: str, n: int) -> None:
    assert_safe(numbered(safe_name(original), n))


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=100))
def test_allowed_extension_survives(stem: str) -> None:
    for ext in ("jpg", "png", "webp"):
        original = f"{stem}.{ext.upper()}"
        if extension_of(original) == ext:
            assert safe_name(original).endswith("." + ext)


PRINTABLE_ASCII = "".join(map(chr, range(0x20, 0x7F)))


@pytest.mark.parametrize("char", PRINTABLE_ASCII)
def test_the_ascii_fast_path_cleans_every_printable_character_as_the_general_path(
    char: str,
) -> None:
    for text in (char, f" a{char}b ", f"{char}{char}.", f"x{char}"):
        assert names._clean(text) == names._clean_unicode(text)


@given(st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=60))
@example("a\x7fb")  # DEL: ASCII, not printable, so the general path drops it
@example(" \t a:b?.jpg ")
def test_the_ascii_fast_path_agrees_with_the_general_path(text: str) -> None:
    assert names._clean(text) == names._clean_unicode(text)
