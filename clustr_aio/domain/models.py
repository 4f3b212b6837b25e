"""The JSON bodies of the API, declared once: handlers build them, and the OpenAPI document's
component schemas are derived from them (:mod:`clustr_aio.web.openapi.schemas`).

They are ``TypedDict``\\ s: at run time a plain ``dict``, so answering a batch of 10,000 files
costs no validation or model objects, while mypy checks every key a handler writes. The
``Field`` annotations are read only when the schema is generated.

This module imports pydantic, so the code that serves requests imports it for its types only
(``TYPE_CHECKING``) and writes the bodies as dict literals: a process loads it on its first
JSON request body (:mod:`clustr_aio.web.bodies`) or OpenAPI document, not at start-up. The
patterns and content types that routes need at run time live in ``domain/patterns.py`` and
``domain/sniff.py``.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal, NotRequired

from pydantic import ConfigDict, Field, with_config
from pydantic.config import JsonDict
from typing_extensions import TypedDict  # pydantic reads its field docs on Python < 3.12

from clustr_aio.domain.patterns import ID_PATTERN, SHA256_PATTERN
from clustr_aio.domain.sniff import STORED_CONTENT_TYPES

__all__ = [
    "ID_PATTERN",
    "SHA256_PATTERN",
    "STORED_CONTENT_TYPES",
    "CheckRequest",
    "CheckResponse",
    "CheckResult",
    "DeleteRequest",
    "DeleteResponse",
    "ErrorBody",
    "FileItem",
    "FileList",
    "Greeting",
    "KeyCreated",
    "KeyItem",
    "KeyList",
    "KeyRequest",
    "RefusedItem",
    "UploadError",
    "UploadResponse",
    "UploadResults",
    "UploadedFile",
]


@with_config(ConfigDict(title="Error", json_schema_extra={"examples": [{"detail": "Not Found"}]}))
class ErrorBody(TypedDict):
    """Every error this server answers, whatever the status."""

    detail: Annotated[str, Field(description="What went wrong, for a person.")]


@with_config(
    ConfigDict(
        title="UploadError",
        json_schema_extra={
            "examples": [
                {
                    "detail": "'notes.txt': files of type .txt are not accepted; allowed: jpg, png",
                    "file": "notes.txt",
                    "index": 2,
                }
            ]
        },
    )
)
class UploadError(TypedDict):
    """A refused upload: what went wrong and, when it is about one of the files, which."""

    detail: Annotated[str, Field(description="What went wrong, for a person.")]
    file: NotRequired[
        Annotated[str, Field(description="The refused file's name, as the client sent it.")]
    ]
    index: NotRequired[
        Annotated[int, Field(ge=0, description="The refused file's position, from 0.")]
    ]


class Greeting(TypedDict):
    """The original service's liveness greeting."""

    message: Literal["Hello World"]


FileId = Annotated[
    str,
    Field(
        pattern=ID_PATTERN,
        description="The file's id: opaque, URL-safe, sorting by creation time.",
        examples=["019ad8c4-6f3a-7c21-9e4b-3f5d2a1b0c9e"],
    ),
]
Sha256 = Annotated[
    str,
    Field(
        pattern=SHA256_PATTERN,
        description="SHA-256 of the file's bytes, hex.",
        examples=["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"],
    ),
]


class FileItem(TypedDict):
    """One stored file."""

    stored_filename: Annotated[
        str,
        Field(
            description="The name the file is stored and served under: the original basename "
            "made safe, with a -1, -2, ... suffix when the name was taken.",
            examples=["beach.jpg", "beach-1.jpg"],
        ),
    ]
    preview_url: Annotated[
        str,
        Field(
            description="Absolute URL of the stored file (`GET /uploads/{filename}`).",
            examples=["http://127.0.0.1:5000/uploads/beach.jpg"],
            json_schema_extra={"format": "uri"},
        ),
    ]
    original_filename: Annotated[
        str, Field(description="The filename the client sent, verbatim.", examples=["beach.jpg"])
    ]
    file_size: Annotated[
        int,
        Field(ge=1, description="Bytes stored (empty files are refused).", examples=[482113]),
    ]
    content_type: Annotated[
        str,
        Field(
            description="Detected from the file's bytes, never taken from the client.",
            json_schema_extra={"enum": list(STORED_CONTENT_TYPES)},
        ),
    ]
    id: FileId
    sha256: Annotated[
        str,
        Field(
            pattern="^[0-9a-f]{64}$",
            description="SHA-256 of the bytes the client sent (before any metadata was removed).",
        ),
    ]
    created_at: Annotated[
        str,
        Field(
            description="When it was stored: RFC 3339, UTC.",
            examples=["2026-12-01T09:30:23.123Z"],
            json_schema_extra={"format": "date-time"},
        ),
    ]
    width: Annotated[
        int | None,
        Field(
            ge=1,
            description="Width in pixels as displayed (EXIF orientation applied), read from the"
            " image's header; null for a file that is not a known image type.",
            examples=[3024],
        ),
    ]
    height: Annotated[
        int | None,
        Field(ge=1, description="Height in pixels as displayed; null as `width`.", examples=[4032]),
    ]
    orientation: Annotated[
        int | None,
        Field(
            ge=1,
            le=8,
            description="The EXIF orientation (1 upright, 6 turned 90° clockwise for display, ...);"
            " 1 when the image has none; null as `width`.",
            examples=[6],
        ),
    ]
    metadata_removed: Annotated[
        bool,
        Field(
            description="Whether the stored file lost metadata the upload had (STRIP_METADATA):"
            " then `file_size` is what is stored, fewer bytes than were sent.",
        ),
    ]

    thumbnail_url: Annotated[
        str | None,
        Field(
            description="Absolute URL of the default thumbnail (the first of THUMBNAIL_SIZES, WebP;"
            " `GET /api/files/{id}/thumbnail`); null for a file that is not an image.",
            examples=[
                "http://127.0.0.1:5000/api/files/019ad8c4-6f3a-7c21-9e4b-3f5d2a1b0c9e/thumbnail"
            ],
            json_schema_extra={"format": "uri"},
        ),
    ]
    thumbnails: Annotated[
        dict[str, str],
        Field(
            description="Every thumbnail size offered (THUMBNAIL_SIZES, longest side in pixels) and"
            " its URL; empty for a file that is not an image.",
            examples=[
                {
                    "256": "http://127.0.0.1:5000/api/files/019ad8c4-6f3a-7c21-9e4b-3f5d2a1b0c9e"
                    "/thumbnail?size=256"
                }
            ],
        ),
    ]


class UploadedFile(FileItem):
    """One stored file of an upload, in the order its part arrived."""

    duplicate: Annotated[
        bool,
        Field(
            description="DEDUPE=reuse: these bytes were stored already, and this is that file "
            "(its name, id and time), not a new copy."
        ),
    ]


class RefusedError(TypedDict):
    status: Annotated[int, Field(ge=400, le=599, examples=[415])]
    detail: Annotated[str, Field(description="What went wrong, for a person.")]


class RefusedItem(TypedDict):
    """``atomic=false``: a file that was not stored, in its place among the items."""

    original_filename: Annotated[str, Field(description="The filename the client sent.")]
    error: RefusedError


class FileList(TypedDict):
    """A page of stored files."""

    data: list[FileItem]
    next_cursor: Annotated[
        str | None,
        Field(description="Pass as `cursor` for the next page; null on the last page."),
    ]


@with_config(ConfigDict(extra="forbid"))
class DeleteRequest(TypedDict):
    ids: Annotated[list[FileId], Field(min_length=1, max_length=1000)]


class DeleteResponse(TypedDict):
    deleted: Annotated[list[str], Field(description="The ids deleted now, in request order.")]
    missing: Annotated[list[str], Field(description="The ids of no stored file.")]


@with_config(ConfigDict(extra="forbid"))
class CheckRequest(TypedDict):
    sha256: Annotated[list[Sha256], Field(min_length=1, max_length=10_000)]


class CheckResult(TypedDict):
    sha256: Annotated[str, Field(description="As sent.")]
    id: Annotated[str | None, Field(description="A stored file with these bytes, or null.")]


class CheckResponse(TypedDict):
    results: Annotated[list[CheckResult], Field(description="One per hash, in request order.")]


_EXAMPLE_UPLOAD: Final[JsonDict] = {
    "message": "Successfully uploaded 2 files",
    "data": [
        {
            "stored_filename": "beach.jpg",
            "preview_url": "http://127.0.0.1:5000/uploads/beach.jpg",
            "original_filename": "beach.jpg",
            "file_size": 482113,
            "content_type": "image/jpeg",
            "id": "019ad8c4-6f3a-7c21-9e4b-3f5d2a1b0c9e",
            "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "created_at": "2026-12-01T09:30:23.123Z",
            "duplicate": False,
            "width": 3024,
            "height": 4032,
            "orientation": 6,
            "metadata_removed": True,
            "thumbnail_url": "http://127.0.0.1:5000/api/files/019ad8c4-6f3a-7c21-9e4b-3f5d2a1b0c9e/thumbnail",
            "thumbnails": {
                "256": "http://127.0.0.1:5000/api/files/019ad8c4-6f3a-7c21-9e4b-3f5d2a1b0c9e/thumbnail?size=256",
                "1024": "http://127.0.0.1:5000/api/files/019ad8c4-6f3a-7c21-9e4b-3f5d2a1b0c9e/thumbnail?size=1024",
            },
        },
        {
            "stored_filename": "dunes.png",
            "preview_url": "http://127.0.0.1:5000/uploads/dunes.png",
            "original_filename": "dunes.png",
            "file_size": 1021877,
            "content_type": "image/png",
            "id": "019ad8c4-6f3a-7c22-8a11-7b2e4c6d8f01",
            "sha256": "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752",
            "created_at": "2026-12-01T09:30:23.123Z",
            "duplicate": True,
            "width": 1920,
            "height": 1080,
            "orientation": 1,
            "metadata_removed": False,
            "thumbnail_url": "http://127.0.0.1:5000/api/files/019ad8c4-6f3a-7c22-8a11-7b2e4c6d8f01/thumbnail",
            "thumbnails": {
                "256": "http://127.0.0.1:5000/api/files/019ad8c4-6f3a-7c22-8a11-7b2e4c6d8f01/thumbnail?size=256",
                "1024": "http://127.0.0.1:5000/api/files/019ad8c4-6f3a-7c22-8a11-7b2e4c6d8f01/thumbnail?size=1024",
            },
        },
    ],
}


@with_config(ConfigDict(json_schema_extra={"examples": [_EXAMPLE_UPLOAD]}))
class UploadResponse(TypedDict):
    """The answer to a successful upload: every file of the request, stored."""

    message: Annotated[
        str,
        Field(
            pattern="^Successfully uploaded [0-9]+ files$",
            examples=["Successfully uploaded 2 files"],
        ),
    ]
    data: Annotated[list[UploadedFile], Field(min_length=1)]


class UploadResults(TypedDict):
    """``atomic=false``: one item per file part, in order; the stored ones and the refused."""

    message: Annotated[
        str,
        Field(pattern="^Uploaded [0-9]+ of [0-9]+ files$", examples=["Uploaded 2 of 3 files"]),
    ]
    data: Annotated[list[UploadedFile | RefusedItem], Field(min_length=1)]


@with_config(ConfigDict(title="KeyItem"))
class KeyItem(TypedDict):
    """An API key, as listed: never the key itself, which is shown once, when it is made."""

    name: Annotated[str, Field(description="The key's name, unique; logs name keys by it.")]
    scopes: Annotated[
        list[Literal["upload", "read", "delete", "admin"]], Field(description="What it may do.")
    ]
    owner: Annotated[str, Field(description="Whose files it stores and sees.")]
    created_at: Annotated[str, Field(description="RFC 3339, UTC.")]
    last_used_at: Annotated[
        str | None, Field(description="RFC 3339, UTC, to the minute or so; null: never used.")
    ]
    expires_at: Annotated[str | None, Field(description="RFC 3339, UTC; null: never.")]
    quota: Annotated[
        int | None, Field(description="Bytes its owner may store with it; null: no quota.")
    ]


@with_config(ConfigDict(title="KeyCreated"))
class KeyCreated(KeyItem):
    """A key just made: the only answer that ever shows the key."""

    key: Annotated[
        str, Field(description="The key: send it as `Authorization: Bearer <key>` or `X-API-Key`.")
    ]


@with_config(ConfigDict(title="KeyList"))
class KeyList(TypedDict):
    data: Annotated[list[KeyItem], Field(description="Every key, by name.")]


@with_config(
    ConfigDict(
        title="KeyRequest",
        json_schema_extra={
            "examples": [{"name": "phone", "scopes": ["upload", "read"], "expires_in": "30d"}]
        },
    )
)
class KeyRequest(TypedDict):
    name: Annotated[str, Field(pattern="^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")]
    scopes: Annotated[
        list[Literal["upload", "read", "delete", "admin"]], Field(min_length=1, max_length=4)
    ]
    owner: NotRequired[
        Annotated[
            str,
            Field(
                pattern="^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$",
                description="Whose files the key stores and sees; default: its name.",
            ),
        ]
    ]
    expires_in: NotRequired[
        Annotated[str, Field(pattern="^[0-9]+[smhdw]$", description="30d, 12h, 90m, 2w…")]
    ]
    quota: NotRequired[
        Annotated[
            int | str,
            Field(description="Bytes, or a size such as 10GiB, the owner may store with it."),
        ]
    ]
