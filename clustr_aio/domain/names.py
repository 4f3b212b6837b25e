"""Original client file names → safe stored names. Pure functions; no I/O.

A stored name is served back under ``UPLOAD_URL_PATH`` and written into the upload folder, so it
must be a plain, single path segment that no client can turn into a path traversal, a hidden file
or a name the filesystem rejects. It stays recognisably close to what the user uploaded.

The extension is whatever follows the basename's last dot, as the original FastAPI service's
``filename.rsplit(".", 1)[1].lower()`` check took it: ``photo.JPG`` has ``jpg``, ``photo`` and
``photo.`` have none, and a name that is only an extension (``.jpg``, ``..jpg``, ``...PNG``) has
that extension. Such a name is stored under the neutral stem :data:`FALLBACK_STEM` (``file.jpg``,
then ``file-1.jpg`` when taken), as is any name whose stem cleans away to nothing.
"""

from __future__ import annotations

import unicodedata

MAX_NAME_BYTES = 255
"""The longest file name (in bytes) that ext4, XFS, btrfs and most others accept."""

FALLBACK_STEM = "file"

# Characters that are legal on Linux but hostile elsewhere (Windows clients downloading the file,
# shells, URLs): replaced rather than dropped so that "a:b.jpg" does not become "ab.jpg".
_HOSTILE = frozenset('<>:"|?*\\/')
_HOSTILE_TABLE = str.maketrans(dict.fromkeys(_HOSTILE, "_"))
_SUFFIX_ROOM = len("-99999")


def extension_of(original: str) -> str:
    """The lower-case extension of the basename, without the dot ("" when there is none)."""
    return _split(basename(original))[1].lower()


def _split(base: str) -> tuple[str, str]:
    """``base`` as (stem, extension) at its last dot; the stem may be empty or only dots."""
    stem, dot, ext = base.rpartition(".")
    return (stem, ext) if dot else (base, "")


def basename(original: str) -> str:
    """The last path segment, whichever separator the client's platform used."""
    return original.replace("\\", "/").rsplit("/", 1)[-1]


def safe_name(original: str) -> str:
    """A stored name derived from ``original``: one segment, no control characters, no leading
    dot, lower-case extension, NFC, at most ``MAX_NAME_BYTES`` bytes with room left for the
    ``-N`` suffix that :func:`numbered` adds when the name is already taken."""
    # Split off the extension by the rule extension_of applies, before cleaning: a file checked
    # as ".jpg" must be stored as one even when nothing printable precedes the dot (".jpg",
    # "\u202e.jpg").
    stem, ext = _split(basename(original))
    ext = _truncate_utf8(_clean(ext).lower(), 16)
    stem = _clean(stem).strip(". ") or FALLBACK_STEM  # ". .x" must not become ".x"
    if not ext and "." in stem:
        # Nothing was left of the extension ("x.A.\x01"): what remains has its own ("x.A").
        return safe_name(stem)
    budget = MAX_NAME_BYTES - _SUFFIX_ROOM - (len(ext.encode()) + 1 if ext else 0)
    stem = _truncate_utf8(stem, budget).rstrip(". ") or FALLBACK_STEM
    return f"{stem}.{ext}" if ext else stem


def numbered(name: str, n: int) -> str:
    """The ``n``-th alternative for a taken ``name``: photo.jpg → photo-1.jpg, photo-2.jpg, …"""
    if n == 0:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        return f"{name}-{n}"
    return f"{stem}-{n}.{ext}"


def _clean(text: str) -> str:
    """NFC text without hostile or invisible characters, trimmed."""
    if text.isascii() and text.isprintable():
        # Most names: ASCII is NFC already, and of its printable characters _clean_char
        # changes only the hostile ones. A fifth of the time of the general path below
        # (tests/domain/test_names.py checks both give the same answers).
        return text.translate(_HOSTILE_TABLE).strip()
    return _clean_unicode(text)


def _clean_unicode(text: str) -> str:
    """:func:`_clean` of any text. Normalised again after the cleaning, since dropping a
    joiner can leave a letter and a combining mark side by side."""
    cleaned = "".join(_clean_char(c) for c in unicodedata.normalize("NFC", text))
    return unicodedata.normalize("NFC", cleaned).strip()


def _clean_char(c: str) -> str:
    if c in _HOSTILE:
        return "_"
    category = unicodedata.category(c)
    if category[0] == "C":  # control, format (bidi overrides!), surrogates, private use
        return ""
    if category[0] == "Z":  # all kinds of spaces become a plain space
        return " "
    return c


def _truncate_utf8(text: str, max_bytes: int) -> str:
    """Cut ``text`` to at most ``max_bytes`` UTF-8 bytes without splitting a character."""
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode(errors="ignore")
