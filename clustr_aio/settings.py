"""Settings: built-in defaults (mirrored in ``config.toml``) < ``config.toml`` < ``.env`` < the
environment, declared on pydantic-settings.

Each setting is read from the highest layer that names it:

1. the TOML file ``CONFIG_FILE`` (default: ``config.toml`` in the working directory; a missing
   default file is fine, its values equal the built-in ones; a missing named file is an error),
2. the dotenv file ``ENV_FILE`` (default: ``.env`` in the working directory, missing is fine),
   read without modifying ``os.environ``,
3. environment variables with the setting's exact name (all others are ignored),
4. keyword overrides to :func:`load_settings` (already-typed values, for tests and the benchmark).

``CONFIG_FILE`` and ``ENV_FILE`` themselves are read from the environment only. Everything in
the two files is meant for this server, so a name there that is not a setting is an error that
suggests the closest one (``MAX_FILESIZE: unknown setting in /srv/.env (did you mean
MAX_FILE_SIZE?)``); the environment holds everybody's variables, so it is only read for the
settings' exact names.

Nothing is looked for beside the code: whether run from a checkout or installed into
site-packages, the server finds ``config.toml``, ``.env`` and the default ``uploads`` folder
where it is started (or beside ``CONFIG_FILE``).

Value syntax, shared by all layers (TOML may also use native booleans, integers and arrays):

- booleans: true/false, 1/0, yes/no, on/off, case-insensitive;
- sizes: see :func:`parse_size`;
- lists: comma-separated text, or a TOML array of strings;
- relative paths: relative to the directory of ``config.toml`` when they come from it, and for
  the built-in default (``uploads``: as if ``config.toml`` had it, which it does); relative to
  the working directory when they come from ``.env`` or the environment.

A bad value raises :class:`SettingsError` whose text is one line naming the setting, e.g.
``PORT: expected an integer from 1 to 65535, got 'abc' (from environment)``.

pydantic-settings reads the files (``TomlConfigSettingsSource``, ``DotEnvSettingsSource``) and
:class:`Settings` validates the values: one ``PlainValidator`` parser per setting, since the
syntax above is stricter than pydantic's lax mode (TOML's ``PORT = true`` or ``WORKERS = 2.0``
are errors) and friendlier than its strict mode (text from the environment is parsed).
:func:`load_settings` stacks the layers itself, because it must know which one each value came
from: errors name it, and relative paths are anchored at its directory.

Adding a setting is one declaration in :class:`Settings`: the field, its type (a parser in
``Annotated``), and ``_setting(default_text, description)``. ``SETTINGS``, the README table and
the loader all derive from it; add the key to ``config.toml`` too (a test checks it).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import Field, PlainValidator, ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "SETTINGS",
    "IPNetwork",
    "SettingSpec",
    "Settings",
    "SettingsError",
    "load_settings",
    "parse_size",
    "settings_table_markdown",
]

DEFAULT_CONFIG_FILE: Final = Path("config.toml")
"""Relative to the working directory, like ``.env``: never to the installed code."""


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
    """An absolute path: a relative one is taken as relative to the working directory (the
    loader has already anchored those from ``config.toml`` at its directory). A ``Path`` is
    welcome too: ``Settings(upload_folder=folder)``."""
    what = "a directory path"
    text = _string(str(raw) if isinstance(raw, Path) else raw, what)
    if not text:
        raise _expected(what, raw)
    return _resolve(text, Path.cwd())


def _resolve(text: str, base_dir: Path) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else base_dir / path


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

# Each setting's type with its parser. PlainValidator: the parser alone decides, pydantic's own
# coercion never runs (it would take TOML's `true` for port 1, and 2.0 for two workers).
_Host = Annotated[str, PlainValidator(_host)]
_Port = Annotated[int, PlainValidator(_integer(1, 65535))]
_Workers = Annotated[int, PlainValidator(_integer(1, 64))]
_Count = Annotated[int, PlainValidator(_integer(1))]
_Boolean = Annotated[bool, PlainValidator(_boolean)]
_Seconds = Annotated[float, PlainValidator(_seconds)]
_Directory = Annotated[Path, PlainValidator(_path)]
_Extensions = Annotated[frozenset[str], PlainValidator(_extensions)]
_UrlPath = Annotated[str, PlainValidator(_url_path)]
_PublicBaseUrl = Annotated[str | None, PlainValidator(_public_base_url)]
_Networks = Annotated[tuple[IPNetwork, ...], PlainValidator(_networks)]
_Size = Annotated[int, PlainValidator(_size)]
_SizeOrZero = Annotated[int, PlainValidator(_size_or_zero)]
_Origins = Annotated[tuple[str, ...], PlainValidator(_cors_origins)]
_LogLevel = Annotated[str, PlainValidator(_log_level)]
_LogFormat = Annotated[str, PlainValidator(_log_format)]
_StripMetadata = Annotated[Literal["location", "all", "none"], PlainValidator(_strip_metadata)]
_ThumbnailSizes = Annotated[tuple[int, ...], PlainValidator(_thumbnail_sizes)]
_Thumbnails = Annotated[Literal["lazy", "eager"], PlainValidator(_thumbnails)]


def _setting(default: str, description: str) -> Any:
    """Declare a setting field.

    ``default`` is text as it would appear in ``.env`` ("" for unset): the field's parser reads
    it like any other value (``validate_default``), so built-in defaults obey the same rules as
    user values, and the README shows them as a user would write them. Typed ``Any`` because
    the text is not the field's type until it is parsed.
    """
    return Field(default, description=description)


class Settings(BaseSettings):
    """Validated, typed configuration. ``Settings()`` holds the built-in defaults, and
    ``Settings(port=80)`` validates what it is given; neither reads a file or the environment.

    Build it with :func:`load_settings`; every value has already been checked.
    """

    model_config = SettingsConfigDict(
        alias_generator=str.upper,  # PORT in the files and the environment, settings.port here
        validate_by_alias=True,
        validate_by_name=True,  # Settings(port=80), as type checkers expect, or Settings(PORT=80)
        case_sensitive=True,
        extra="forbid",
        frozen=True,
        validate_default=True,  # the defaults are text, parsed like user values
        enable_decoding=False,  # lists are comma-separated text, never JSON
    )

    host: _Host = _setting("127.0.0.1", "Address to bind; 0.0.0.0 or :: listens on all interfaces.")
    port: _Port = _setting("5000", "TCP port to listen on (1-65535).")
    reload: _Boolean = _setting(
        "false", "Restart the server when the code changes (development only)."
    )
    workers: _Workers = _setting(
        "1",
        "Processes serving the one listening socket (1-64); more than 1 adds a supervisor that"
        " replaces a worker that dies. Ignored when RELOAD is on.",
    )
    shutdown_timeout: _Seconds = _setting(
        "30",
        "Seconds a stopping server (SIGTERM) lets uploads in flight finish before aborting them;"
        " keep systemd's TimeoutStopSec above it.",
    )
    upload_folder: _Directory = _setting(
        "uploads",
        "Directory files are stored in; a relative path is relative to config.toml's directory"
        " if set there or not set at all, to the working directory if set in .env or the"
        " environment.",
    )
    allowed_extensions: _Extensions = _setting(
        "png,jpg,jpeg,webp",
        "Accepted file extensions: comma-separated, case-insensitive, leading dot optional.",
    )
    upload_url_path: _UrlPath = _setting(
        "/uploads", "URL path prefix stored files are served under (not / alone)."
    )
    public_base_url: _PublicBaseUrl = _setting(
        "",
        "Public http(s) URL clients reach the server at, e.g. https://photos.example.com behind"
        " a proxy; unset: http://HOST:PORT.",
    )
    forwarded_allow_ips: _Networks = _setting(
        "127.0.0.1,::1",
        "Proxies (IP addresses or networks, comma-separated, or *) whose X-Forwarded-Proto/"
        "X-Forwarded-Host or Forwarded headers set the scheme and host of the URLs in a response;"
        " PUBLIC_BASE_URL, when set, wins.",
    )
    max_file_size: _Size = _setting(
        "50MiB",
        "Largest accepted file: bytes or a size like 25MB, 1.5GB, 1GiB (kB/MB/GB decimal,"
        " KiB/MiB/GiB and bare k/m/g binary).",
    )
    max_request_size: _Size = _setting(
        "10GiB", "Largest accepted request body; same syntax as MAX_FILE_SIZE."
    )
    max_files: _Count = _setting("10000", "Most files accepted in one request.")
    min_free_space: _SizeOrZero = _setting(
        "100MiB",
        "Free space to keep on the upload folder's filesystem: an upload that would leave less is"
        " refused with 507 (before its body when Content-Length tells), and /readyz fails below"
        " it; same syntax as MAX_FILE_SIZE, 0 to fill the disk to the last byte.",
    )
    fsync: _Boolean = _setting(
        "true",
        "Flush each file and its directory to disk before answering 200; off is faster but a"
        " crash can lose files already reported as stored.",
    )
    cors_origins: _Origins = _setting(
        "*",
        "Origins allowed to call the API from a browser: *, comma-separated origins, or empty"
        " for none.",
    )
    log_level: _LogLevel = _setting(
        "INFO", "Least severe log level shown: DEBUG, INFO, WARNING, ERROR, CRITICAL."
    )
    log_format: _LogFormat = _setting(
        "text",
        "text: one line per record (without timestamps, with <N> priority prefixes when stderr is"
        " the systemd journal); json: one JSON object per line.",
    )
    access_log: _Boolean = _setting("true", "Log one line per request.")
    max_image_pixels: _Count = _setting(
        "100000000",
        "Most pixels in one image (width x height, the frames of an animation summed): a larger"
        " one is refused with 413 as soon as its header shows it, before any decode.",
    )
    strip_metadata: _StripMetadata = _setting(
        "location",
        "Metadata removed from stored images, losslessly: location (GPS and location tags of"
        " EXIF, XMP and IPTC), all (everything but orientation and ICC profile), none.",
    )
    thumbnail_sizes: _ThumbnailSizes = _setting(
        "256,1024",
        "Thumbnail sizes offered, longest side in pixels, comma-separated; the first is the"
        " default. Any other size asked for is a 400.",
    )
    thumbnails: _Thumbnails = _setting(
        "lazy",
        "lazy: a thumbnail is rendered on its first request; eager: every size is rendered in"
        " the background after the upload's 200, behind requests.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the values given to the constructor: :func:`load_settings` reads the layers."""
        return (init_settings,)

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
    """Documentation of one setting, derived from its :class:`Settings` field."""

    name: str  # "PORT": the config.toml key and the environment variable
    attribute: str  # "port": the Settings field
    default: str  # as text, as in config.toml/.env; "" means unset
    description: str  # one line
    is_path: bool  # relative values are anchored at the directory of their layer


def _spec(attribute: str) -> SettingSpec:
    field = Settings.model_fields[attribute]
    assert field.alias is not None
    assert isinstance(field.default, str)
    assert field.description is not None
    return SettingSpec(
        name=field.alias,
        attribute=attribute,
        default=field.default,
        description=field.description,
        is_path=field.annotation is Path,
    )


SETTINGS: Final[tuple[SettingSpec, ...]] = tuple(map(_spec, Settings.model_fields))

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
    """The raw values of one configuration source, relative paths already anchored."""

    origin: str  # named in error messages: "environment" or the file's path
    values: Mapping[str, object]

    @classmethod
    def anchored(cls, origin: str, values: Mapping[str, object], base_dir: Path) -> _Layer:
        """A layer whose relative paths are relative to ``base_dir``, not the working directory."""

        def anchor(name: str, value: object) -> object:
            if _BY_NAME[name].is_path and isinstance(value, str) and value.strip():
                return str(_resolve(value.strip(), base_dir))
            return value  # not a path, or not one at all: the parser reports it as given

        return cls(origin, {name: anchor(name, value) for name, value in values.items()})


def _file_path(given: Path | None, environ: Mapping[str, str], variable: str) -> Path | None:
    """The explicitly named file (argument, else environment variable), or None for the default."""
    if given is not None:
        return Path(given).absolute()
    named = environ.get(variable)
    return Path(named).absolute() if named else None


def _check_named_file(path: Path, variable: str) -> None:
    if not path.exists():
        raise SettingsError(f"{variable}: {path} does not exist")
    if path.is_dir():
        raise SettingsError(f"{variable}: {path} is a directory")


def _check_names(names: Iterable[str], origin: str) -> None:
    """Everything in config.toml and .env is meant for this server (unlike the environment):
    a name that is not a setting is a typo, or a setting in the wrong place."""
    for name in names:
        if name in _BY_NAME:
            continue
        if name in ("CONFIG_FILE", "ENV_FILE"):
            raise SettingsError(f"{name}: read from the environment only, not from {origin}")
        close = difflib.get_close_matches(name.upper(), _BY_NAME, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise SettingsError(f"{name}: unknown setting in {origin}{hint}")


def _config_layer(config_file: Path | None, environ: Mapping[str, str]) -> tuple[_Layer, Path]:
    """config.toml's layer, and the directory its relative paths (and the defaults') start from."""
    named = _file_path(config_file, environ, "CONFIG_FILE")
    if named is not None:
        _check_named_file(named, "CONFIG_FILE")
    path = named or DEFAULT_CONFIG_FILE.absolute()  # a missing default file reads as empty
    try:
        source = TomlConfigSettingsSource(Settings, toml_file=path)
    except OSError as error:
        raise SettingsError(f"CONFIG_FILE: cannot read {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"CONFIG_FILE: {path} is not valid TOML: {error}") from None
    _check_names(source.toml_data, str(path))
    return _Layer.anchored(str(path), source(), path.parent), path.parent


def _env_file_layer(env_file: Path | None, environ: Mapping[str, str]) -> _Layer:
    named = _file_path(env_file, environ, "ENV_FILE")
    if named is not None:
        _check_named_file(named, "ENV_FILE")
    path = named or Path(".env").absolute()  # a missing default file reads as empty
    try:
        source = DotEnvSettingsSource(Settings, env_file=path)
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError(f"ENV_FILE: cannot read {path}: {error}") from None
    # env_vars: every name in the file, a bare "NAME" line (no value, which sets nothing) too.
    _check_names(source.env_vars, str(path))
    # Relative paths in .env are relative to where the server was started, as the parser takes
    # them, so the layer needs no anchoring.
    return _Layer(str(path), source())


def _environment_layer(environ: Mapping[str, str]) -> _Layer:
    # pydantic-settings' EnvSettingsSource reads os.environ only; this is what it would read
    # there with case_sensitive=True (the exact names), from the mapping we were given.
    return _Layer("environment", {name: environ[name] for name in _BY_NAME if name in environ})


def _one_line(error: ErrorDetails, origins: Mapping[str, str]) -> str:
    """A pydantic error as ``NAME: what was wrong (from where)``."""
    name = str(error["loc"][0]) if error["loc"] else "settings"
    cause = error.get("ctx", {}).get("error")
    if error["type"] == "value_error" and cause is not None:
        message = str(cause)  # a parser's "expected ..., got ..."
    else:  # a check of pydantic's own, in its words
        message = f"{error['msg'][:1].lower()}{error['msg'][1:]}, got {error['input']!r}"
    origin = origins.get(name)
    return f"{name}: {message}" + (f" (from {origin})" if origin else "")


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
        config_file: the TOML file (default ``$CONFIG_FILE``, else config.toml in the working
            directory).
        env_file: the dotenv file (default ``$ENV_FILE``, else ``.env`` in the working directory).
        overrides: typed values by field name (``port=0``), used as given, without validation.

    Raises:
        SettingsError: a named file is missing or unreadable, a file names an unknown setting, or
            a value is malformed. Only the value that wins is parsed.
        TypeError: an override names no setting.
    """
    unknown = sorted(overrides.keys() - _BY_ATTRIBUTE.keys())
    if unknown:
        raise TypeError(f"load_settings() got overrides for unknown settings: {', '.join(unknown)}")
    env = os.environ if environ is None else environ
    config, config_dir = _config_layer(config_file, env)
    defaults = {spec.name: spec.default for spec in SETTINGS}
    layers = (
        _Layer.anchored("built-in defaults", defaults, config_dir),  # as if config.toml had them
        config,
        _env_file_layer(env_file, env),
        _environment_layer(env),
    )
    values: dict[str, object] = {}
    origins: dict[str, str] = {}
    for layer in layers:
        values |= layer.values
        origins |= dict.fromkeys(layer.values, layer.origin)
    for attribute in overrides:
        del values[_BY_ATTRIBUTE[attribute].name]  # set below as given, so never parsed
    try:
        settings = Settings.model_validate(values)
    except ValidationError as error:
        raise SettingsError(_one_line(error.errors()[0], origins)) from None
    return settings.model_copy(update=overrides)
