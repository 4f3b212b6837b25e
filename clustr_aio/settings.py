"""Settings: built-in defaults (mirrored in ``config.toml``) < a ``.env`` file < the environment.

Each setting is read from the highest layer that names it:

1. the TOML file ``CONFIG_FILE`` (default: ``config.toml`` at the repository root; a missing
   default file is fine, its values equal the built-in ones; a missing named file is an error),
2. the dotenv file ``ENV_FILE`` (default: ``.env`` in the working directory, missing is fine),
   read with ``dotenv_values`` so ``os.environ`` is never modified,
3. environment variables with the setting's exact name (all others are ignored),
4. keyword overrides to :func:`load_settings` (already-typed values, for tests and the benchmark).

``CONFIG_FILE`` and ``ENV_FILE`` themselves are read from the environment only.

Value syntax, shared by all layers (TOML may also use native booleans, integers and arrays):

- booleans: true/false, 1/0, yes/no, on/off, case-insensitive;
- sizes: see :func:`parse_size`;
- lists: comma-separated text, or a TOML array of strings;
- relative paths: relative to the directory of ``config.toml`` when they come from it, to the
  working directory when they come from ``.env`` or the environment.

A bad value raises :class:`SettingsError` whose text is one line naming the setting, e.g.
``PORT: expected an integer from 1 to 65535, got 'abc' (from environment)``.

Adding a setting is one declaration in :class:`Settings`: the field, its type, and a
``_setting(default_text, parser, description)`` call. ``SETTINGS``, the README table and the
loader all derive from it; add the key to ``config.toml`` too (a test checks it).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Final, TypeVar, cast
from urllib.parse import urlsplit

from dotenv import dotenv_values

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "REPO_ROOT",
    "SETTINGS",
    "SettingSpec",
    "Settings",
    "SettingsError",
    "load_settings",
    "parse_size",
    "settings_table_markdown",
]

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
"""The parent of the ``clustr_aio`` package: home of ``config.toml`` and the default uploads."""

DEFAULT_CONFIG_FILE: Final = REPO_ROOT / "config.toml"

T = TypeVar("T")


class SettingsError(ValueError):
    """A setting is missing its file, unknown or malformed. ``str(e)`` is the one line to print."""


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
# Each raises ValueError("expected <what>, got <raw>"); the loader prefixes the setting's name.


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


def _boolean(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and (value := _BOOLEANS.get(raw.strip().lower())) is not None:
        return value
    raise _expected("a boolean (true/false, yes/no, on/off, 1/0)", raw)


def _integer(minimum: int, maximum: int | None = None) -> Callable[[object], int]:
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


def _seconds(raw: object) -> float:
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


def _size(raw: object) -> int:
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


def _size_or_zero(raw: object) -> int:
    """Like :func:`_size`, but 0 is allowed: it switches the check off."""
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


def _host(raw: object) -> str:
    what = "an IP address or host name"
    host = _string(raw, what)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # "[::1]" as written in URLs; the socket wants the bare address
    if not _is_host(host):
        raise _expected(what, raw)
    return host


def _path(raw: object) -> Path:
    """A path; the loader anchors a relative one at the directory of the layer it came from."""
    what = "a directory path"
    text = _string(raw, what)
    if not text:
        raise _expected(what, raw)
    return Path(text).expanduser()


_EXTENSION = re.compile(r"[a-z0-9]+", re.ASCII)


def _extensions(raw: object) -> frozenset[str]:
    what = "one or more file extensions such as png,jpg,webp"
    # ".PNG" and "png" are the same extension: compare lower-case and without the dot.
    extensions = [item.lstrip(".").lower() for item in _items(raw, what)]
    if not extensions or not all(_EXTENSION.fullmatch(ext) for ext in extensions):
        raise _expected(what, raw)
    return frozenset(extensions)


# The characters RFC 3986 allows in a path segment, percent-escapes included.
_URL_SEGMENT = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@%-]+", re.ASCII)


def _url_path(raw: object) -> str:
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


def _public_base_url(raw: object) -> str | None:
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


def _cors_origins(raw: object) -> tuple[str, ...]:
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


_log_level = _one_of("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", normalise=str.upper)
_log_format = _one_of("text", "json", normalise=str.lower)
_strip_metadata = _one_of("location", "all", "none", normalise=str.lower)
_thumbnails = _one_of("lazy", "eager", normalise=str.lower)

_MAX_THUMBNAIL_SIZE: Final = 4096


def _thumbnail_sizes(raw: object) -> tuple[int, ...]:
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


def _networks(raw: object) -> tuple[IPNetwork, ...]:
    """IP addresses and CIDR networks, comma-separated; ``*`` means every address."""
    what = "* or comma-separated IP addresses or networks such as 127.0.0.1,::1,10.0.0.0/8"
    items = _items(raw, what)
    if items == ["*"]:
        return (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
    try:
        return tuple(ipaddress.ip_network(item, strict=False) for item in items)
    except ValueError:
        raise _expected(what, raw) from None


# --------------------------------------------------------------------------------------------
# Declarations


@dataclass(frozen=True, slots=True)
class _Declaration:
    """What ``_setting`` stores in a field's metadata."""

    default: str
    parse: Callable[[object], object]
    description: str


_METADATA_KEY: Final = "clustr_aio.setting"


def _anchor(value: T, base_dir: Path) -> T:
    """Resolve a relative ``Path`` value against the directory of the layer it came from."""
    if isinstance(value, Path) and not value.is_absolute():
        return cast(T, base_dir / value)  # a Path, so still a T
    return value


def _setting(default: str, parse: Callable[[object], T], description: str) -> T:
    """Declare a setting field.

    ``default`` is text as it would appear in ``.env`` ("" for unset); it goes through ``parse``
    like any other value, so built-in defaults obey the same rules as user values. Relative paths
    in defaults are anchored at the repository root, where ``config.toml`` lives.
    """
    value = _anchor(parse(default), REPO_ROOT)
    return field(default=value, metadata={_METADATA_KEY: _Declaration(default, parse, description)})


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    """Validated, typed configuration. ``Settings()`` holds the built-in defaults.

    Build it with :func:`load_settings`; every value has already been checked.
    """

    host: str = _setting(
        "127.0.0.1", _host, "Address to bind; 0.0.0.0 or :: listens on all interfaces."
    )
    port: int = _setting("5000", _integer(1, 65535), "TCP port to listen on (1-65535).")
    reload: bool = _setting(
        "false", _boolean, "Restart the server when the code changes (development only)."
    )
    workers: int = _setting(
        "1",
        _integer(1, 64),
        "Processes serving the one listening socket (1-64); more than 1 adds a supervisor that"
        " replaces a worker that dies. Ignored when RELOAD is on.",
    )
    shutdown_timeout: float = _setting(
        "30",
        _seconds,
        "Seconds a stopping server (SIGTERM) lets uploads in flight finish before aborting them;"
        " keep systemd's TimeoutStopSec above it.",
    )
    # RUF009 warns that a call's result is shared by all instances; a Path is immutable.
    upload_folder: Path = _setting(  # noqa: RUF009
        "uploads",
        _path,
        "Directory files are stored in; a relative path is relative to config.toml's directory"
        " if set there, to the working directory if set in .env or the environment.",
    )
    allowed_extensions: frozenset[str] = _setting(
        "png,jpg,jpeg,webp",
        _extensions,
        "Accepted file extensions: comma-separated, case-insensitive, leading dot optional.",
    )
    upload_url_path: str = _setting(
        "/uploads", _url_path, "URL path prefix stored files are served under (not / alone)."
    )
    public_base_url: str | None = _setting(
        "",
        _public_base_url,
        "Public http(s) URL clients reach the server at, e.g. https://photos.example.com behind"
        " a proxy; unset: http://HOST:PORT.",
    )
    forwarded_allow_ips: tuple[IPNetwork, ...] = _setting(
        "127.0.0.1,::1",
        _networks,
        "Proxies (IP addresses or networks, comma-separated, or *) whose X-Forwarded-Proto/"
        "X-Forwarded-Host or Forwarded headers set the scheme and host of the URLs in a response;"
        " PUBLIC_BASE_URL, when set, wins.",
    )
    max_file_size: int = _setting(
        "50MiB",
        _size,
        "Largest accepted file: bytes or a size like 25MB, 1.5GB, 1GiB (kB/MB/GB decimal,"
        " KiB/MiB/GiB and bare k/m/g binary).",
    )
    max_request_size: int = _setting(
        "10GiB", _size, "Largest accepted request body; same syntax as MAX_FILE_SIZE."
    )
    max_files: int = _setting("10000", _integer(1), "Most files accepted in one request.")
    min_free_space: int = _setting(
        "100MiB",
        _size_or_zero,
        "Free space to keep on the upload folder's filesystem: an upload that would leave less is"
        " refused with 507 (before its body when Content-Length tells), and /readyz fails below"
        " it; same syntax as MAX_FILE_SIZE, 0 to fill the disk to the last byte.",
    )
    fsync: bool = _setting(
        "true",
        _boolean,
        "Flush each file and its directory to disk before answering 200; off is faster but a"
        " crash can lose files already reported as stored.",
    )
    cors_origins: tuple[str, ...] = _setting(
        "*",
        _cors_origins,
        "Origins allowed to call the API from a browser: *, comma-separated origins, or empty"
        " for none.",
    )
    log_level: str = _setting(
        "INFO", _log_level, "Least severe log level shown: DEBUG, INFO, WARNING, ERROR, CRITICAL."
    )
    log_format: str = _setting(
        "text",
        _log_format,
        "text: one line per record (without timestamps, with <N> priority prefixes when stderr is"
        " the systemd journal); json: one JSON object per line.",
    )
    access_log: bool = _setting("true", _boolean, "Log one line per request.")
    max_image_pixels: int = _setting(
        "100000000",
        _integer(1),
        "Most pixels in one image (width x height, the frames of an animation summed): a larger"
        " one is refused with 413 as soon as its header shows it, before any decode.",
    )
    strip_metadata: str = _setting(
        "location",
        _strip_metadata,
        "Metadata removed from stored images, losslessly: location (GPS and location tags of"
        " EXIF, XMP and IPTC), all (everything but orientation and ICC profile), none.",
    )
    thumbnail_sizes: tuple[int, ...] = _setting(
        "256,1024",
        _thumbnail_sizes,
        "Thumbnail sizes offered, longest side in pixels, comma-separated; the first is the"
        " default. Any other size asked for is a 400.",
    )
    thumbnails: str = _setting(
        "lazy",
        _thumbnails,
        "lazy: a thumbnail is rendered on its first request; eager: every size is rendered in"
        " the background after the upload's 200, behind requests.",
    )

    @property
    def base_url(self) -> str:
        """Where clients reach this server: ``public_base_url`` if set, else ``http://HOST:PORT``.

        A wildcard bind address (0.0.0.0, ::) means "every interface" and is not an address a
        browser can connect to, so it becomes the loopback address of the same family (127.0.0.1,
        [::1]). IPv6 addresses are bracketed, as URLs require.
        """
        if self.public_base_url is not None:
            return self.public_base_url
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError:
            return f"http://{self.host}:{self.port}"  # a host name
        if address.is_unspecified:
            address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
        if address.version == 6:
            # A zone ("fe80::1%eth0") must be percent-escaped inside a URL (RFC 6874).
            return f"http://[{str(address).replace('%', '%25')}]:{self.port}"
        return f"http://{address}:{self.port}"


@dataclass(frozen=True, slots=True)
class SettingSpec:
    """Documentation and parser of one setting, derived from its :class:`Settings` field."""

    name: str  # "PORT": the config.toml key and the environment variable
    attribute: str  # "port": the Settings field
    default: str  # as text, as in config.toml/.env; "" means unset
    description: str  # one line
    parse: Callable[[object], object]


SETTINGS: Final[tuple[SettingSpec, ...]] = tuple(
    SettingSpec(
        name=f.name.upper(),
        attribute=f.name,
        default=f.metadata[_METADATA_KEY].default,
        description=f.metadata[_METADATA_KEY].description,
        parse=f.metadata[_METADATA_KEY].parse,
    )
    for f in dataclasses.fields(Settings)
)

_BY_NAME: Final[Mapping[str, SettingSpec]] = {spec.name: spec for spec in SETTINGS}
_BY_ATTRIBUTE: Final[Mapping[str, SettingSpec]] = {spec.attribute: spec for spec in SETTINGS}


def settings_table_markdown() -> str:
    """A Markdown table of every setting (name, default, description), for the README."""
    rows = ["| Setting | Default | Description |", "|---|---|---|"]
    for spec in SETTINGS:
        default = f"`{spec.default}`" if spec.default else "(unset)"
        # "|" would end the cell and a lone "*" can start emphasis; both are literal here.
        description = spec.description.replace("|", "\\|").replace("*", "\\*")
        rows.append(f"| `{spec.name}` | {default} | {description} |")
    return "\n".join(rows) + "\n"


# --------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True, slots=True)
class _Layer:
    """The raw values of one configuration source."""

    origin: str  # named in error messages: "environment" or the file's path
    base_dir: Path  # relative paths from this layer are relative to this directory
    values: Mapping[str, object]


def _file_path(given: Path | None, environ: Mapping[str, str], variable: str) -> Path | None:
    """The explicitly named file (argument, else environment variable), or None for the default."""
    if given is not None:
        return Path(given).absolute()
    named = environ.get(variable)
    return Path(named).absolute() if named else None


def _config_layer(config_file: Path | None, environ: Mapping[str, str]) -> _Layer:
    named = _file_path(config_file, environ, "CONFIG_FILE")
    path = named or DEFAULT_CONFIG_FILE
    try:
        with path.open("rb") as file:
            values = tomllib.load(file)
    except FileNotFoundError:
        if named is not None:
            raise SettingsError(f"CONFIG_FILE: {path} does not exist") from None
        values = {}  # the built-in defaults are the shipped config.toml's values
    except OSError as error:
        raise SettingsError(f"CONFIG_FILE: cannot read {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"CONFIG_FILE: {path} is not valid TOML: {error}") from None
    for key in values:
        if key not in _BY_NAME:
            # Unlike the environment, everything in config.toml is meant for us: catch typos.
            close = difflib.get_close_matches(key.upper(), _BY_NAME, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise SettingsError(f"{key}: unknown setting in {path}{hint}")
    return _Layer(str(path), path.parent, values)


def _env_file_layer(env_file: Path | None, environ: Mapping[str, str]) -> _Layer:
    named = _file_path(env_file, environ, "ENV_FILE")
    path = named or Path(".env").absolute()
    cwd = Path.cwd()  # relative paths in .env are relative to where the server was started
    if not path.exists():
        if named is not None:
            raise SettingsError(f"ENV_FILE: {path} does not exist")
        return _Layer(str(path), cwd, {})
    try:
        values = dotenv_values(path)
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError(f"ENV_FILE: cannot read {path}: {error}") from None
    # A bare "NAME" line has no value (None): it sets nothing.
    return _Layer(str(path), cwd, {k: v for k, v in values.items() if v is not None})


def _parse(spec: SettingSpec, layer: _Layer) -> object:
    raw = layer.values[spec.name]
    try:
        value = spec.parse(raw)
    except ValueError as error:
        raise SettingsError(f"{spec.name}: {error} (from {layer.origin})") from None
    return _anchor(value, layer.base_dir)


def load_settings(
    *,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
    env_file: Path | None = None,
    **overrides: object,
) -> Settings:
    """Read and validate the settings: ``config.toml`` < ``.env`` < environment < ``overrides``.

    Args:
        environ: the environment to read (default ``os.environ``).
        config_file: the TOML file (default ``$CONFIG_FILE``, else the repository's config.toml).
        env_file: the dotenv file (default ``$ENV_FILE``, else ``.env`` in the working directory).
        overrides: typed values by field name (``port=0``), used as given, without validation.

    Raises:
        SettingsError: a named file is missing or unreadable, config.toml has an unknown key, or
            a value is malformed. Only the value that wins is parsed.
        TypeError: an override names no setting.
    """
    unknown = sorted(overrides.keys() - _BY_ATTRIBUTE.keys())
    if unknown:
        raise TypeError(f"load_settings() got overrides for unknown settings: {', '.join(unknown)}")
    env = os.environ if environ is None else environ
    layers = (
        _config_layer(config_file, env),
        _env_file_layer(env_file, env),
        _Layer("environment", Path.cwd(), {s.name: env[s.name] for s in SETTINGS if s.name in env}),
    )
    # Any: each value was produced by its own field's parser, which mypy checked against the field.
    values: dict[str, Any] = dict(overrides)
    for spec in SETTINGS:
        if spec.attribute in values:
            continue
        layer = next((layer for layer in reversed(layers) if spec.name in layer.values), None)
        if layer is not None:
            values[spec.attribute] = _parse(spec, layer)
    return dataclasses.replace(Settings(), **values)
