"""Value syntax shared by every layer: each parser takes a raw value (text from ``.env`` or the
environment, or a native TOML value) to its typed value, or raises ``ValueError("expected <what>,
got <raw>")``; the loader prefixes the setting's name and where the value came from."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

__all__ = [
    "IPNetwork",
    "integer_between",
    "parse_auth",
    "parse_boolean",
    "parse_byte_limit",
    "parse_byte_limit_or_zero",
    "parse_cors_origins",
    "parse_database_url",
    "parse_dedupe",
    "parse_event_loop",
    "parse_extensions",
    "parse_host",
    "parse_log_format",
    "parse_log_level",
    "parse_networks",
    "parse_optional_networks",
    "parse_path",
    "parse_public_base_url",
    "parse_rate",
    "parse_seconds",
    "parse_secret_keys",
    "parse_size",
    "parse_strip_metadata",
    "parse_thumbnail_sizes",
    "parse_thumbnails",
    "parse_url_path",
    "resolve",
]


# --------------------------------------------------------------------------------------------
# Sizes


_SIZE = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[a-z]*)", re.IGNORECASE | re.ASCII)

_SIZE_UNITS: Final[Mapping[str, int]] = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    # A bare letter is binary, as in nginx's client_max_body_size and Docker's --memory: a limit
    # copied from the proxy in front of this server then means the same number of bytes here.
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
    "t": 2**40,
}

_SIZE_EXAMPLES: Final = "a size such as 52428800, 25MB, 1.5GB or 512KiB"


def parse_size(text: str) -> int:
    """Parse a byte count: ``"52428800"``, ``"25MB"``, ``"1.5 GB"``, ``"1GiB"``, ``"512k"``.

    Units are case-insensitive. kB/MB/GB/TB are decimal (powers of 1000), KiB/MiB/GiB/TiB are
    binary (powers of 1024), and the bare letters k/m/g/t are binary like nginx's. ``B`` or no unit
    means bytes. Fractions are allowed and round down to whole bytes (``"1.5k"`` is 1536). Zero is a
    valid size; callers that need at least one byte check that themselves.

    Raises:
        ValueError: the text is not a non-negative number with an optional known unit.
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        if text.strip().startswith("-"):
            raise ValueError(f"expected a size that is not negative, got {text!r}")
        raise ValueError(f"expected {_SIZE_EXAMPLES}, got {text!r}")
    unit = _SIZE_UNITS.get(match["unit"].lower())
    if unit is None:
        raise ValueError(
            f"unknown size unit {match['unit']!r} in {text!r} "
            "(use B, kB, MB, GB, TB, KiB, MiB, GiB, TiB, or k, m, g, t for KiB to TiB)"
        )
    # Fraction keeps "1.5GB" exact; int() truncates, i.e. rounds down for non-negative numbers.
    return int(Fraction(match["number"]) * unit)


# --------------------------------------------------------------------------------------------
# Parsers: raw value (str from .env/environment, or a native TOML value) -> typed value.
# Each raises ValueError("expected <what>, got <raw>"); pydantic reports it as a ValidationError,
# which the loader turns into one line prefixed with the setting's name.


def _expected(what: str, raw: object) -> ValueError:
    return ValueError(f"expected {what}, got {raw!r}")


def _string(raw: object, what: str) -> str:
    """The stripped text of a string value; other TOML types are an error, never coerced."""
    if not isinstance(raw, str):
        raise _expected(what, raw)
    return raw.strip()


def _items(raw: object, what: str) -> list[str]:
    """The non-empty stripped items of comma-separated text or of a TOML array of strings."""
    if isinstance(raw, str):
        items = raw.split(",")
    elif isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        items = raw
    else:
        raise _expected(what, raw)
    return [stripped for item in items if (stripped := item.strip())]


_BOOLEANS: Final[Mapping[str, bool]] = {
    "true": True,
    "1": True,
    "yes": True,
    "on": True,
    "false": False,
    "0": False,
    "no": False,
    "off": False,
}


def parse_boolean(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and (value := _BOOLEANS.get(raw.strip().lower())) is not None:
        return value
    raise _expected("a boolean (true/false, yes/no, on/off, 1/0)", raw)


def integer_between(minimum: int, maximum: int | None = None) -> Callable[[object], int]:
    """A parser for whole numbers from ``minimum`` to ``maximum`` (None: no upper bound)."""
    what = (
        f"an integer of at least {minimum}"
        if maximum is None
        else f"an integer from {minimum} to {maximum}"
    )

    def parse(raw: object) -> int:
        # bool is an int subclass: `PORT = true` in TOML must not become port 1.
        if isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        elif isinstance(raw, str) and re.fullmatch(r"\s*\d+\s*", raw, re.ASCII):
            value = int(raw)
        else:
            raise _expected(what, raw)
        if value < minimum or (maximum is not None and value > maximum):
            raise _expected(what, raw)
        return value

    return parse


def parse_seconds(raw: object) -> float:
    """A duration in seconds, zero or more: a TOML number, or text such as ``30`` or ``2.5``."""
    what = "a number of seconds such as 30 or 2.5"
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise _expected(what, raw)  # bool is an int subclass: `= true` is not one second
    if isinstance(raw, str) and not re.fullmatch(r"\s*\d+(\.\d+)?\s*", raw, re.ASCII):
        raise _expected(what, raw)
    value = float(raw)
    if not 0 <= value < float("inf"):
        raise _expected(what, raw)
    return value


_DURATION_UNITS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(raw: object) -> float:
    """A positive duration: seconds as a TOML number or text (``90``), or text with a unit:
    ``90s``, ``30m``, ``24h``, ``7d``."""
    what = "a duration such as 3600, 30m, 24h or 7d"
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise _expected(what, raw)
    if isinstance(raw, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", raw, re.ASCII)
        if match is None:
            raise _expected(what, raw)
        value = float(match[1]) * _DURATION_UNITS[match[2]]
    else:
        value = float(raw)
    if not 0 < value < float("inf"):
        raise _expected(what, raw)
    return value


def parse_byte_limit(raw: object) -> int:
    """A byte limit: a TOML integer, or text for :func:`parse_size`; at least one byte."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str):
        value = parse_size(raw)  # its ValueError already reads "expected ..., got ..."
    else:
        raise _expected(_SIZE_EXAMPLES, raw)
    if value < 1:
        raise _expected("a size of at least 1 byte", raw)
    return value


def parse_byte_limit_or_zero(raw: object) -> int:
    """Like :func:`parse_byte_limit`, but 0 is allowed: it switches the check off."""
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        return raw
    if isinstance(raw, str):
        return parse_size(raw)
    raise _expected(_SIZE_EXAMPLES, raw)


_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?", re.ASCII)


def _is_host(text: str) -> bool:
    """Whether ``text`` is an IP address or a syntactically valid host name."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        return True
    labels = text.removesuffix(".").split(".")  # a trailing dot marks a fully qualified name
    if len(text) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return False
    # An all-digit last label is a mistyped IPv4 address such as 300.1.1.1, never a real name.
    return not labels[-1].isdigit()


def parse_host(raw: object) -> str:
    what = "an IP address or host name"
    host = _string(raw, what)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # "[::1]" as written in URLs; the socket wants the bare address
    if not _is_host(host):
        raise _expected(what, raw)
    return host


def parse_path(raw: object) -> Path:
    """An absolute path: a relative one is taken as relative to the working directory (the
    loader has already anchored those from ``config.toml`` at its directory). A ``Path`` is
    welcome too: ``Settings(upload_folder=folder)``."""
    what = "a directory path"
    text = _string(str(raw) if isinstance(raw, Path) else raw, what)
    if not text:
        raise _expected(what, raw)
    return resolve(text, Path.cwd())


def resolve(text: str, base_dir: Path) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else base_dir / path


_EXTENSION = re.compile(r"[a-z0-9]+", re.ASCII)


def parse_extensions(raw: object) -> frozenset[str]:
    what = "one or more file extensions such as png,jpg,webp"
    # ".PNG" and "png" are the same extension: compare lower-case and without the dot.
    extensions = [item.lstrip(".").lower() for item in _items(raw, what)]
    if not extensions or not all(_EXTENSION.fullmatch(ext) for ext in extensions):
        raise _expected(what, raw)
    return frozenset(extensions)


# The characters RFC 3986 allows in a path segment, percent-escapes included.
_URL_SEGMENT = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@%-]+", re.ASCII)


def parse_url_path(raw: object) -> str:
    what = "a URL path such as /uploads"
    text = _string(raw, what)
    path = text.rstrip("/")  # "/uploads/" and "/uploads" name the same prefix
    segments = path.split("/")[1:]
    # "/" alone is rejected: files served at the root would shadow every other route.
    if not text.startswith("/") or not segments:
        raise _expected(what, raw)
    if not all(_URL_SEGMENT.fullmatch(seg) and seg not in (".", "..") for seg in segments):
        raise _expected(what, raw)
    return path


def parse_public_base_url(raw: object) -> str | None:
    what = "an http(s) URL such as https://photos.example.com"
    text = _string(raw, what)
    if not text:
        return None  # empty means unset, e.g. to undo a value from config.toml in .env
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises for a non-numeric or out-of-range port
    except ValueError:
        raise _expected(what, raw) from None
    if (
        parts.scheme.lower() not in ("http", "https")
        or parts.hostname is None
        or not _is_host(parts.hostname)
        or parts.username is not None  # credentials in a URL we hand out to clients: never
        or "?" in text
        or "#" in text
        or any(char.isspace() for char in text)
    ):
        raise _expected(what, raw)
    return text.rstrip("/")


_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#@\s]+", re.ASCII)


def _is_origin(text: str) -> bool:
    """Whether ``text`` is scheme://host[:port] (any scheme: apps send capacitor://localhost)."""
    if not _ORIGIN.fullmatch(text):
        return False
    try:
        parts = urlsplit(text)
        _ = parts.port
    except ValueError:
        return False
    return parts.hostname is not None and _is_host(parts.hostname)


def parse_cors_origins(raw: object) -> tuple[str, ...]:
    what = "* or comma-separated origins such as https://app.example.com"
    items = _items(raw, what)
    if items == ["*"]:
        return ("*",)
    origins: list[str] = []
    for item in items:
        # Browsers send the Origin header lower-case and without a path; match that form.
        origin = item.rstrip("/").lower()
        if not _is_origin(origin):
            raise _expected(what, raw)
        if origin not in origins:
            origins.append(origin)
    return tuple(origins)


def _one_of(*choices: str, normalise: Callable[[str], str]) -> Callable[[object], str]:
    """A parser accepting ``choices`` only, after ``normalise`` (say, upper-casing)."""
    what = "one of " + ", ".join(choices)

    def parse(raw: object) -> str:
        value = normalise(_string(raw, what))
        if value not in choices:
            raise _expected(what, raw)
        return value

    return parse


parse_log_level = _one_of("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", normalise=str.upper)
parse_log_format = _one_of("text", "json", normalise=str.lower)
parse_strip_metadata = _one_of("location", "all", "none", normalise=str.lower)
parse_thumbnails = _one_of("lazy", "eager", normalise=str.lower)
parse_event_loop = _one_of("auto", "uvloop", "asyncio", normalise=str.lower)

_MAX_THUMBNAIL_SIZE: Final = 4096


def parse_thumbnail_sizes(raw: object) -> tuple[int, ...]:
    """Longest sides in pixels, comma-separated or a TOML array; in order (the first is the
    default), without repeats."""
    what = f"comma-separated sizes in pixels from 1 to {_MAX_THUMBNAIL_SIZE} such as 256,1024"
    if isinstance(raw, list) and all(type(item) is int for item in raw):  # no bools
        items = [str(item) for item in raw]
    else:
        items = _items(raw, what)
    if not items or not all(re.fullmatch(r"\d+", item, re.ASCII) for item in items):
        raise _expected(what, raw)
    sizes = tuple(dict.fromkeys(int(item) for item in items))
    if not all(1 <= size <= _MAX_THUMBNAIL_SIZE for size in sizes):
        raise _expected(what, raw)
    return sizes


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(raw: object) -> tuple[IPNetwork, ...]:
    """IP addresses and CIDR networks, comma-separated; ``*`` means every address."""
    what = "* or comma-separated IP addresses or networks such as 127.0.0.1,::1,10.0.0.0/8"
    items = _items(raw, what)
    if items == ["*"]:
        return (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
    try:
        return tuple(ipaddress.ip_network(item, strict=False) for item in items)
    except ValueError:
        raise _expected(what, raw) from None


parse_dedupe = _one_of("off", "reuse", "reject", normalise=str.lower)
parse_storage = _one_of("local", "s3", normalise=str.lower)
parse_s3_serve = _one_of("redirect", "proxy", normalise=str.lower)

_S3_MIN_PART = 5 * 1024 * 1024  # S3's smallest part but the last
_S3_MAX_PART = 5 * 1024 * 1024 * 1024


def parse_s3_part_size(raw: object) -> int:
    """A multipart upload's part size: S3 takes 5 MiB to 5 GiB."""
    value = parse_byte_limit(raw)
    if not _S3_MIN_PART <= value <= _S3_MAX_PART:
        raise _expected("a part size from 5MiB to 5GiB", raw)
    return value


def _optional_matching(pattern: str, what: str) -> Callable[[object], str | None]:
    """A parser of text that must match ``pattern`` whole; empty means unset."""
    compiled = re.compile(pattern, re.ASCII)

    def parse(raw: object) -> str | None:
        text = _string(raw, what).strip()
        if text and not compiled.fullmatch(text):
            raise _expected(what, raw)
        return text or None

    return parse


parse_s3_region = _optional_matching(r"[a-z0-9]+(-[a-z0-9]+)*", "a region such as us-east-1")
parse_bucket = _optional_matching(
    r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]",
    "a bucket name such as clustr-photos (3-63 of a-z, 0-9, '.', '-')",
)


def parse_access_key_id(raw: object) -> str | None:
    """An access key id: printable, no spaces; empty means unset."""
    what = "an access key id (printable, no spaces)"
    text = _string(raw, what).strip()
    if (text and not text.isprintable()) or " " in text:
        raise _expected(what, raw)
    return text or None


def parse_secret_key(raw: object) -> str | None:
    """A secret key: printable, no spaces; empty means unset. Never echoed in an error."""
    what = "a secret key (printable, no spaces)"
    text = _string(raw, what).strip() if isinstance(raw, str) else None
    if text is None or (text and not text.isprintable()) or " " in text:
        raise _expected(what, "<the value, not shown>")
    return text or None


def parse_s3_prefix(raw: object) -> str:
    """A key prefix inside the bucket: "" or segments ending in "/" (one is added)."""
    what = "a key prefix such as clustr/ (no leading /, no empty or dot segments)"
    text = _string(raw, what).strip()
    if not text:
        return ""
    text = text if text.endswith("/") else text + "/"
    segments = text[:-1].split("/")
    if any(not seg or seg in (".", "..") for seg in segments) or "\\" in text:
        raise _expected(what, raw)
    return text


def parse_endpoint_url(raw: object) -> str | None:
    """An http(s) URL of an S3-compatible endpoint; empty: AWS's own."""
    what = "an http(s) URL such as http://127.0.0.1:8333"
    text = _string(raw, what).strip()
    if not text:
        return None
    try:
        parts = urlsplit(text)
        _ = parts.port
    except ValueError:
        raise _expected(what, raw) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise _expected(what, raw)
    return text.rstrip("/")


def parse_database_url(raw: object) -> str | None:
    """A PostgreSQL URL (``postgresql://`` or ``postgres://``) or ``sqlite:///<path>``; empty
    means the embedded SQLite file beside the uploads."""
    what = "a postgresql://user:password@host/database or sqlite:///path URL"
    text = _string(raw, what)
    if not text:
        return None
    shown = raw if "@" not in text else "<a URL with credentials>"  # a password is never echoed
    try:
        parts = urlsplit(text)
        _ = parts.port
    except ValueError:
        raise _expected(what, shown) from None
    scheme = parts.scheme.lower()
    if scheme in ("postgresql", "postgres") and (parts.hostname or parts.query or parts.path):
        return text
    if scheme == "sqlite" and parts.path not in ("", "/"):
        return text
    raise _expected(what, shown)


parse_auth = _one_of("off", "keys", normalise=str.lower)


def parse_optional_networks(raw: object) -> tuple[IPNetwork, ...]:
    """As :func:`parse_networks`, but empty is allowed: no restriction."""
    if isinstance(raw, str) and not raw.strip():
        return ()
    return parse_networks(raw)


_RATE = re.compile(r"(?P<amount>[^/]+)/(?P<count>\d*)\s*(?P<unit>[a-z]+)", re.IGNORECASE | re.ASCII)
_PERIODS: Final[Mapping[str, int]] = {
    "s": 1, "sec": 1, "second": 1,
    "m": 60, "min": 60, "minute": 60,
    "h": 3600, "hour": 3600,
    "d": 86400, "day": 86400,
}  # fmt: skip


def parse_rate(*, sizes: bool) -> Callable[[object], tuple[int, int] | None]:
    """A parser for ``AMOUNT/PERIOD`` (``600/min``, ``20GiB/h``, ``100/10s``): the amount (a
    count, or with ``sizes`` a size as :func:`parse_size` reads it) and the period in seconds;
    empty means no limit (None)."""
    what = "a rate such as 20GiB/h" if sizes else "a rate such as 600/min"

    def parse(raw: object) -> tuple[int, int] | None:
        text = _string(raw, what)
        if not text:
            return None
        match = _RATE.fullmatch(text)
        period = _PERIODS.get(match["unit"].lower().removesuffix("s") or "s") if match else None
        if match is None or period is None:
            raise _expected(what, raw)
        amount_text = match["amount"].strip()
        try:
            amount = parse_size(amount_text) if sizes else int(amount_text)
        except ValueError:
            raise _expected(what, raw) from None
        count = int(match["count"] or 1)
        if amount < 1 or count < 1:
            raise _expected(what, raw)
        return amount, count * period

    return parse


MIN_SECRET_LENGTH: Final = 32


def parse_secret_keys(raw: object) -> tuple[str, ...]:
    """Comma-separated secrets, each at least 32 characters; the first signs, all verify (so a
    new one can be put first while URLs signed with the old one still work). Never echoed."""
    what = f"comma-separated secrets of at least {MIN_SECRET_LENGTH} characters each"
    if not isinstance(raw, str | list):
        raise ValueError(f"expected {what}")
    try:
        secrets = _items(raw, what)
    except ValueError:
        raise ValueError(f"expected {what}") from None
    if any(len(secret) < MIN_SECRET_LENGTH for secret in secrets):
        raise ValueError(f"expected {what} (one is shorter; its value is not shown)")
    return tuple(secrets)
