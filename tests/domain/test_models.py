"""The API's models are what the server answers, and what the OpenAPI document describes."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from clustr_aio.domain.models import ErrorBody, Greeting, UploadedFile, UploadResponse
from tests.conftest import JPEG, PNG, Client
from tests.http.helpers import upload, upload_ok


def strictly(model: Any, body: object) -> None:
    TypeAdapter(model).validate_python(body, strict=True)


async def test_real_answers_are_instances_of_the_models(client: Client) -> None:
    strictly(Greeting, await (await client.get("/")).json())
    await upload_ok(client, ("a.jpg", JPEG), ("b.png", PNG))
    answer = await (await upload(client, ("c.jpg", JPEG))).json()
    strictly(UploadResponse, answer)
    strictly(ErrorBody, await (await client.get("/no/such/path")).json())


def test_the_models_are_strict_enough_to_fail() -> None:
    with pytest.raises(ValidationError):
        strictly(UploadResponse, {"message": "Successfully uploaded 1 files", "data": []})
    with pytest.raises(ValidationError):
        strictly(Greeting, {"message": "Hi"})


async def test_the_document_derives_its_schemas_from_the_models(client: Client) -> None:
    schemas = (await (await client.get("/openapi.json")).json())["components"]["schemas"]
    item = schemas["UploadedFile"]
    assert item["required"] == [
        "stored_filename",
        "preview_url",
        "original_filename",
        "file_size",
        "content_type",
        "id",
        "sha256",
        "created_at",
        "width",
        "height",
        "orientation",
        "metadata_removed",
        "thumbnail_url",
        "thumbnails",
        "duplicate",
    ]
    assert item["description"] == UploadedFile.__doc__  # the model's own words
    assert schemas["UploadResponse"]["properties"]["data"]["items"] == {
        "$ref": "#/components/schemas/UploadedFile"
    }
    assert schemas["Error"]["required"] == ["detail"]
    assert schemas["Greeting"]["properties"]["message"]["const"] == "Hello World"
