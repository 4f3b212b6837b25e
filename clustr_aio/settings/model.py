"""The declarations: one field per setting, its parser, its default (as text) and its
description; ``SETTINGS`` and the README table derive from them."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final, Literal

from clustr_aio.settings.fields import DeclaredSettings, Parser, cross_check
from clustr_aio.settings.fields import setting as _setting
from clustr_aio.settings.values import (
    IPNetwork,
    integer_between,
    parse_access_key_id,
    parse_auth,
    parse_boolean,
    parse_bucket,
    parse_byte_limit,
    parse_byte_limit_or_zero,
    parse_cors_origins,
    parse_database_url,
    parse_dedupe,
    parse_duration,
    parse_endpoint_url,
    parse_event_loop,
    parse_extensions,
    parse_host,
    parse_log_format,
    parse_log_level,
    parse_networks,
    parse_optional_networks,
    parse_path,
    parse_public_base_url,
    parse_rate,
    parse_s3_part_size,
    parse_s3_prefix,
    parse_s3_region,
    parse_s3_serve,
    parse_seconds,
    parse_secret_key,
    parse_secret_keys,
    parse_storage,
    parse_strip_metadata,
    parse_thumbnail_sizes,
    parse_thumbnails,
    parse_url_path,
)

__all__ = [
    "BY_ATTRIBUTE",
    "BY_NAME",
    "SETTINGS",
    "SettingSpec",
    "Settings",
    "settings_table_markdown",
]


# --------------------------------------------------------------------------------------------
# Declarations

# Each setting's type with its parser. The parser alone decides: nothing coerces around it (a
# lax coercion would take TOML's `true` for port 1, and 2.0 for two workers).
_Host = Annotated[str, Parser(parse_host)]
_Port = Annotated[int, Parser(integer_between(1, 65535))]
_Workers = Annotated[int, Parser(integer_between(1, 64))]
_Count = Annotated[int, Parser(integer_between(1))]
_Boolean = Annotated[bool, Parser(parse_boolean)]
_Seconds = Annotated[float, Parser(parse_seconds)]
_Directory = Annotated[Path, Parser(parse_path)]
_Extensions = Annotated[frozenset[str], Parser(parse_extensions)]
_UrlPath = Annotated[str, Parser(parse_url_path)]
_PublicBaseUrl = Annotated[str | None, Parser(parse_public_base_url)]
_Networks = Annotated[tuple[IPNetwork, ...], Parser(parse_networks)]
_Size = Annotated[int, Parser(parse_byte_limit)]
_SizeOrZero = Annotated[int, Parser(parse_byte_limit_or_zero)]
_Origins = Annotated[tuple[str, ...], Parser(parse_cors_origins)]
_LogLevel = Annotated[str, Parser(parse_log_level)]
_LogFormat = Annotated[str, Parser(parse_log_format)]
_DatabaseUrl = Annotated[str | None, Parser(parse_database_url)]
_Dedupe = Annotated[str, Parser(parse_dedupe)]
_Storage = Annotated[str, Parser(parse_storage)]
_Bucket = Annotated[str | None, Parser(parse_bucket)]
_Prefix = Annotated[str, Parser(parse_s3_prefix)]
_EndpointUrl = Annotated[str | None, Parser(parse_endpoint_url)]
_Region = Annotated[str | None, Parser(parse_s3_region)]
_AccessKey = Annotated[str | None, Parser(parse_access_key_id)]
_SecretKey = Annotated[str | None, Parser(parse_secret_key)]
_PartSize = Annotated[int, Parser(parse_s3_part_size)]
_Serve = Annotated[str, Parser(parse_s3_serve)]
_Duration = Annotated[float, Parser(parse_duration)]
_Auth = Annotated[str, Parser(parse_auth)]
_OptionalNetworks = Annotated[tuple[IPNetwork, ...], Parser(parse_optional_networks)]
_RequestRate = Annotated[tuple[int, int] | None, Parser(parse_rate(sizes=False))]
_ByteRate = Annotated[tuple[int, int] | None, Parser(parse_rate(sizes=True))]
_Secrets = Annotated[tuple[str, ...], Parser(parse_secret_keys)]
_PositiveSeconds = Annotated[int, Parser(integer_between(1))]
_StripMetadata = Annotated[Literal["location", "all", "none"], Parser(parse_strip_metadata)]
_ThumbnailSizes = Annotated[tuple[int, ...], Parser(parse_thumbnail_sizes)]
_Thumbnails = Annotated[Literal["lazy", "eager"], Parser(parse_thumbnails)]
_EventLoop = Annotated[Literal["auto", "uvloop", "asyncio"], Parser(parse_event_loop)]


class Settings(DeclaredSettings):
    """Validated, typed configuration. ``Settings()`` holds the built-in defaults, and
    ``Settings(port=80)`` validates what it is given; neither reads a file or the environment.

    Build it with :func:`load_settings`; every value has already been checked.
    """

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
    request_header_timeout: _Seconds = _setting(
        "10",
        "Seconds a client has, from the first byte of a request, to send its request line and"
        " headers; a slower one gets a 408 and its connection is closed. 0: no limit.",
    )
    body_idle_timeout: _Seconds = _setting(
        "30",
        "Seconds an upload's body may go without a byte while the server waits for one; then a"
        " 408 (or, if no answer can be sent any more, a closed connection), and nothing of the"
        " upload is kept. 0: no limit.",
    )
    min_body_rate: _SizeOrZero = _setting(
        "1KiB",
        "Bytes per second an upload's body must average over each BODY_IDLE_TIMEOUT while the"
        " server waits for it (same syntax as MAX_FILE_SIZE); a slower one is cut as an idle"
        " one is. 0: no minimum.",
    )
    send_timeout: _Seconds = _setting(
        "60",
        "Seconds a client may leave the bytes sent to it unacknowledged (it stopped reading, or"
        " went away) before the kernel closes its connection (TCP_USER_TIMEOUT). 0: the"
        " kernel's default, which is many minutes.",
    )
    keepalive_timeout: _Seconds = _setting(
        "75",
        "Seconds a connection may stay idle, between requests or before its first one, before"
        " it is closed. 0: no limit.",
    )
    event_loop: _EventLoop = _setting(
        "auto",
        "The event loop each serving process runs on: uvloop (libuv's, less CPU per request and"
        " per byte), asyncio (Python's own), or auto: uvloop when it is installed, else asyncio.",
    )
    max_connections: _Count = _setting(
        "4096",
        "Most open client connections per process (fewer if the descriptor limit, RLIMIT_NOFILE,"
        " leaves less room): at the limit, the connection idle the longest is closed to make"
        " room, and a new one is closed if every connection is busy.",
    )
    max_concurrent_uploads: _Count = _setting(
        "64",
        "Most uploads received at the same time per process; one more is refused with 503 and"
        " Retry-After before its body is read.",
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
        "Flush each file, its directory and the embedded catalog's commit to disk before"
        " answering 200; off is faster but a crash of the machine can lose files and records"
        " already reported as stored.",
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
    database_url: _DatabaseUrl = _setting(
        "",
        "The catalog of stored files: postgresql://user:password@host/db for PostgreSQL (shared"
        " by every process and machine), sqlite:///path for a SQLite file elsewhere; unset: a"
        " SQLite file in UPLOAD_FOLDER (.catalog.sqlite3, never served).",
    )
    dedupe: _Dedupe = _setting(
        "off",
        "A file whose bytes (sha256) are already stored: off stores it again, reuse answers with"
        " the stored file (duplicate: true), reject refuses the upload with 409.",
    )
    storage: _Storage = _setting(
        "local",
        "Where stored files live: local (UPLOAD_FOLDER) or s3 (the S3_BUCKET of an S3-compatible"
        " store, shared by every instance; use it with a PostgreSQL DATABASE_URL).",
    )
    s3_endpoint_url: _EndpointUrl = _setting(
        "", "STORAGE=s3: the store's http(s) URL (SeaweedFS, MinIO, Ceph…); unset: AWS S3."
    )
    s3_bucket: _Bucket = _setting(
        "", "STORAGE=s3: the bucket (it must exist); required with STORAGE=s3."
    )
    s3_prefix: _Prefix = _setting(
        "",
        "STORAGE=s3: a key prefix for every object, e.g. clustr/ (several services, one bucket).",
    )
    s3_region: _Region = _setting(
        "",
        "STORAGE=s3: the region requests are signed for (SigV4); unset: the AWS default chain,"
        " else us-east-1.",
    )
    s3_access_key_id: _AccessKey = _setting(
        "",
        "STORAGE=s3: the access key; unset: the standard AWS chain (AWS_ACCESS_KEY_ID,"
        " AWS_PROFILE, ~/.aws, instance roles).",
    )
    s3_secret_access_key: _SecretKey = _setting(
        "", "STORAGE=s3: the secret key that goes with S3_ACCESS_KEY_ID."
    )
    s3_part_size: _PartSize = _setting(
        "16MiB",
        "STORAGE=s3: a file up to this size is sent in one PUT, a larger one in parts of this"
        " size (5MiB-5GiB); an upload holds at most max(32MiB, this) on its way to the store, one"
        " more part being received and 5MiB (a large file's first part).",
    )
    s3_serve: _Serve = _setting(
        "redirect",
        "STORAGE=s3: GET /uploads/{name} answers a 302 to a presigned URL of the object, valid"
        " 5 minutes (redirect: clients must reach S3_ENDPOINT_URL), or streams it through (proxy).",
    )
    s3_orphan_grace: _Seconds = _setting(
        "86400",
        "STORAGE=s3: seconds after which an object without a record (a crash between storing and"
        " cataloguing) or an unfinished multipart upload is removed; keep it above the longest"
        " upload.",
    )

    @cross_check
    def _s3_needs_a_bucket(self) -> None:
        if self.storage == "s3" and self.s3_bucket is None:
            raise ValueError("S3_BUCKET: required when STORAGE is s3")
        if (self.s3_access_key_id is None) != (self.s3_secret_access_key is None):
            raise ValueError("S3_SECRET_ACCESS_KEY: set both S3_ACCESS_KEY_ID and it, or neither")

    tus_expiry: _Duration = _setting(
        "24h",
        "How long a resumable upload (/api/tus/) lives after its last byte came: then 410, and"
        " its data is removed (404); seconds or 90s, 30m, 24h, 7d.",
    )
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

    auth: _Auth = _setting(
        "off",
        "off: anyone who reaches the port may use every route (as the original service); keys:"
        " every /api route needs an API key (Authorization: Bearer or X-API-Key) with its"
        " scope, made with `clustr-aio keys create`.",
    )
    metrics_allow: _OptionalNetworks = _setting(
        "",
        "Addresses or networks (comma-separated) that may read /metrics (and, with"
        " AUTH=keys, admin keys from anywhere); empty: any client.",
    )
    rate_limit_requests: _RequestRate = _setting(
        "",
        "Requests to the /api routes per API key (per client address with AUTH=off), as a"
        " token bucket, e.g. 600/min, shared by the workers of this host; more get a 429 with"
        " Retry-After. Empty: no limit.",
    )
    rate_limit_upload_bytes: _ByteRate = _setting(
        "",
        "Upload bytes per API key (per client address with AUTH=off), e.g. 20GiB/h, shared by"
        " the workers of this host; an upload over it gets a 429 with Retry-After. Empty: no"
        " limit.",
    )
    public_files: _Boolean = _setting(
        "true",
        "true: stored files are served to anyone at their URL; false: only through the signed,"
        " expiring URLs the API hands out (SECRET_KEY required).",
    )
    secret_key: _Secrets = _setting(
        "",
        "Secrets (comma-separated, at least 32 characters each) that sign file URLs when"
        " PUBLIC_FILES is false: the first signs, every one verifies, so a new one can go first"
        " while URLs signed with the old one still work.",
        secret=True,
    )
    signed_url_ttl: _PositiveSeconds = _setting(
        "3600", "Seconds a signed file URL stays valid (PUBLIC_FILES=false)."
    )

    @cross_check
    def _secret_when_files_are_private(self) -> None:
        if not self.public_files and not self.secret_key:
            raise ValueError("SECRET_KEY: required when PUBLIC_FILES is false")

    @functools.cached_property  # every upload's answer asks (its links): parsed once
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


SETTINGS: Final[tuple[SettingSpec, ...]] = tuple(
    SettingSpec(
        name=field.name,
        attribute=field.attribute,
        default=field.default,
        description=field.description,
        is_path=field.type is Path,
    )
    for field in Settings.FIELDS.values()
)

BY_NAME: Final[Mapping[str, SettingSpec]] = {spec.name: spec for spec in SETTINGS}
BY_ATTRIBUTE: Final[Mapping[str, SettingSpec]] = {spec.attribute: spec for spec in SETTINGS}


def settings_table_markdown() -> str:
    """A Markdown table of every setting (name, default, description), for the README."""
    rows = ["| Setting | Default | Description |", "|---|---|---|"]
    for spec in SETTINGS:
        default = f"`{spec.default}`" if spec.default else "(unset)"
        # "|" would end the cell and a lone "*" can start emphasis; both are literal here.
        description = spec.description.replace("|", "\\|").replace("*", "\\*")
        rows.append(f"| `{spec.name}` | {default} | {description} |")
    return "\n".join(rows) + "\n"
