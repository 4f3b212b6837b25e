"""botocore's data read lean (clustr_aio/storage/s3/lean_data.py): what is kept is what botocore
itself would have made of the files, and nothing the package calls is left out."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.loaders import Loader
from botocore.model import OperationModel, ServiceModel, Shape
from botocore.regions import EndpointResolver

from clustr_aio.storage.s3.client import S3Client, S3Config, open_client
from clustr_aio.storage.s3.lean_data import ENDPOINT_PREFIXES, S3_OPERATIONS, lean_loader

PACKAGE = Path(__file__).resolve().parents[2] / "clustr_aio"

_CALL = re.compile(r"\bclient\.([a-z_0-9]+)\(")
_NAMED = re.compile(r"\b(generate_presigned_url|get_paginator)\(\s*\"([a-z_0-9]+)\"")
_NOT_OPERATIONS = frozenset({"generate_presigned_url", "get_paginator", "close"})


@pytest.fixture
async def lean_client() -> AsyncIterator[S3Client]:
    """The client the service makes (made offline: nothing is asked of the store)."""
    config = S3Config(
        bucket="b", endpoint_url="http://127.0.0.1:9", access_key_id="a", secret_access_key="s"
    )
    async with open_client(config) as client:
        yield client


def calls_in_the_package() -> tuple[set[str], set[str]]:
    """The client methods called anywhere in clustr_aio, and the operations presigned or paged
    through by name."""
    methods: set[str] = set()
    named: set[str] = set()
    for source in PACKAGE.rglob("*.py"):
        text = source.read_text()
        methods |= set(_CALL.findall(text)) - _NOT_OPERATIONS
        named |= {operation for _, operation in _NAMED.findall(text)}
    return methods, named


async def test_every_operation_the_package_calls_is_kept(lean_client: S3Client) -> None:
    methods, named = calls_in_the_package()
    assert {"upload_part", "put_object", "delete_objects"} <= methods  # the scan finds them
    assert {"get_object", "list_objects_v2"} <= named
    missing = sorted(name for name in methods | named if not hasattr(lean_client, name))
    assert missing == [], f"add these to lean_data.S3_OPERATIONS: {missing}"
    for operation in ("list_objects_v2", "list_multipart_uploads"):
        assert lean_client.can_paginate(operation)


def stock_model() -> ServiceModel:
    return ServiceModel(Loader().load_service_model("s3", "service-2"), service_name="s3")


def lean_model() -> ServiceModel:
    return ServiceModel(lean_loader(None).load_service_model("s3", "service-2"), "s3")


def described(shape: Shape | None, seen: frozenset[str] = frozenset()) -> Any:
    """What botocore serialises and parses by: every trait but the documentation."""
    if shape is None:
        return None
    traits = {key: value for key, value in shape.metadata.items() if key != "documentation"}
    head: tuple[Any, ...] = (
        shape.name,
        shape.type_name,
        sorted(shape.serialization.items()),
        sorted(traits),
    )
    if shape.name in seen:
        return head
    inner = seen | {shape.name}
    members = getattr(shape, "members", None)
    if members is not None:
        return (*head, [(name, described(member, inner)) for name, member in members.items()])
    for field in ("member", "key", "value"):
        if hasattr(shape, field):
            head = (*head, field, described(getattr(shape, field), inner))
    return head


def operation_description(operation: OperationModel) -> Any:
    return (
        operation.http,
        operation.auth_type,
        operation.context_parameters,
        operation.static_context_parameters,
        operation.http_checksum,
        operation.http_checksum_required,
        described(operation.input_shape),
        described(operation.output_shape),
        sorted(error.name for error in operation.error_shapes),
    )


def test_the_kept_operations_are_what_botocore_makes_of_the_full_model() -> None:
    stock, lean = stock_model(), lean_model()
    assert sorted(lean.operation_names) == sorted(S3_OPERATIONS)
    assert len(stock.operation_names) > 3 * len(S3_OPERATIONS)  # there was something to drop
    for name in S3_OPERATIONS:
        assert operation_description(lean.operation_model(name)) == operation_description(
            stock.operation_model(name)
        ), name
    assert lean.metadata == stock.metadata
    assert lean.client_context_parameters == stock.client_context_parameters
    assert lean.operation_model("PutObject").documentation == ""  # what was left out


def test_endpoints_resolve_as_botocore_resolves_them() -> None:
    stock = EndpointResolver(Loader().load_data("endpoints"))
    lean = EndpointResolver(lean_loader(None).load_data("endpoints"))
    regions = ("us-east-1", "eu-west-1", "ap-southeast-2", "cn-north-1", "us-gov-west-1")
    for prefix in ENDPOINT_PREFIXES:
        for region in regions:
            assert lean.construct_endpoint(prefix, region) == stock.construct_endpoint(
                prefix, region
            ), (prefix, region)
    assert lean.get_available_endpoints("s3") == stock.get_available_endpoints("s3")


async def test_an_aws_bucket_is_addressed_as_with_botocore_s_own_data() -> None:
    """No endpoint URL (AWS): the endpoint rules give the same URL, signed for the same region."""
    config = S3Config(bucket="b", region="eu-west-1", access_key_id="a", secret_access_key="s")
    async with (
        open_client(config) as lean,
        get_session().create_client(
            "s3",
            region_name="eu-west-1",
            aws_access_key_id="a",
            aws_secret_access_key="s",
            config=AioConfig(signature_version="s3v4"),
        ) as stock,
    ):
        urls = [
            await client.generate_presigned_url(
                "get_object", Params={"Bucket": "photos", "Key": "a b.jpg"}, ExpiresIn=60
            )
            for client in (lean, stock)
        ]
    parts = [urlsplit(url) for url in urls]
    assert parts[0][:3] == parts[1][:3]
    assert parts[0].netloc.startswith("photos.s3.")  # virtual-host style, on AWS
    queries = [parse_qs(part.query) for part in parts]
    assert queries[0].keys() == queries[1].keys()
    assert queries[0]["X-Amz-Credential"][0].split("/")[2:] == ["eu-west-1", "s3", "aws4_request"]
