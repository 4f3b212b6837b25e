"""The JSON bodies of the API, declared once: handlers build them, and the OpenAPI document's
component schemas are derived from them (:mod:`clustr_aio.web.openapi.schemas`).

They are ``TypedDict``\\ s: at run time a plain ``dict``, so answering a batch of 10,000 files
costs no validation or model objects, while mypy checks every key a handler writes. The
``Field`` annotations are read only when the schema is generated.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import ConfigDict, Field, with_config
from pydantic.config import JsonDict
from typing_extensions import TypedDict  # pydantic reads its field docs on Python < 3.12

from clustr_aio.domain.sniff import KNOWN_TYPES, OCTET_STREAM

__all__ = ["STORED_CONTENT_TYPES", "ErrorBody", "Greeting", "UploadResponse", "UploadedFile"]

STORED_CONTENT_TYPES: Final = (*(t.content_type for t in KNOWN_TYPES), OCTET_STREAM)
"""What ``content_type`` of an upload item can be: a sniffed image type, or octet-stream for an
allowed extension that is not a known image type."""


@with_config(ConfigDict(title="Error", json_schema_extra={"examples": [{"detail": "Not Found"}]}))
class ErrorBody(TypedDict):
    """Every error this server answers, whatever the status."""

    detail: Annotated[str, Field(description="What went wrong, for a person.")]


class Greeting(TypedDict):
    """The original service's liveness greeting."""

    message: Literal["Hello World"]


class UploadedFile(TypedDict):
    """One stored file, in the order its part arrived."""

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


_EXAMPLE_UPLOAD: Final[JsonDict] = {
    "message": "Successfully uploaded 2 files",
    "data": [
        {
            "stored_filename": "beach.jpg",
            "preview_url": "http://127.0.0.1:5000/uploads/beach.jpg",
            "original_filename": "beach.jpg",
            "file_size": 482113,
            "content_type": "image/jpeg",
            "width": 3024,
            "height": 4032,
            "orientation": 6,
            "metadata_removed": True,
        },
        {
            "stored_filename": "dunes.png",
            "preview_url": "http://127.0.0.1:5000/uploads/dunes.png",
            "original_filename": "dunes.png",
            "file_size": 1021877,
            "content_type": "image/png",
            "width": 1920,
            "height": 1080,
            "orientation": 1,
            "metadata_removed": False,
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
