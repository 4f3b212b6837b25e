"""botocore's data files read for what this service's S3 client does with them, and no more.

botocore reads each of its JSON files into ``OrderedDict`` objects and keeps them for the
client's life: the S3 model (1.4 MB of JSON, 78 % of it documentation, 116 operations), its
endpoint rules (0.9 MB) and the endpoints of every AWS service (1.25 MB, of which an S3
client reads one service's). That was 11 MiB of an idle ``STORAGE=s3`` process (tracemalloc:
6.8 MiB for the endpoints, 3.3 MiB for the model, 1.3 MiB for the rules). Read here instead:

- into plain dicts (ordered too, since Python 3.7; botocore asks no more of them), half the
  size of an ``OrderedDict``;
- without the documentation of shapes, their members and operations, which only botocore's
  docstrings and help read (a member reference that said nothing but its shape and its
  documentation then resolves to the shared shape rather than a copy of it: the same
  traits);
- the S3 model with only the operations in :data:`S3_OPERATIONS` and the shapes they reach
  (13 of 116 operations, 181 of 722 shapes): the client has no method for any other, and
  needs none (``tests/storage/test_s3_lean_data.py`` checks that every call the package
  makes is kept);
- with the endpoints of S3 and of the services the standard credential chain creates
  clients of (STS for roles and web identities, SSO and its OIDC tokens, sign-in), by their
  endpoint prefix, in every partition.

Together: the S3 model 0.3 MiB, the endpoints next to nothing. Everything else (the endpoint
rules, paginators, retry modes, the defaults) is read as botocore reads it. :func:`lean_loader`
is registered as the session's ``data_loader`` (``Session.register_component``, botocore's
public way to replace one of its components).
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable
from typing import Any, Final

from botocore.loaders import JSONFileLoader, Loader, create_loader

__all__ = ["ENDPOINT_PREFIXES", "S3_OPERATIONS", "LeanJSONFileLoader", "lean_loader"]

S3_OPERATIONS: Final = frozenset(
    {
        # What storage/s3/ calls (and presigns, and pages through).
        "AbortMultipartUpload",
        "CompleteMultipartUpload",
        "CreateMultipartUpload",
        "DeleteObject",
        "DeleteObjects",
        "GetObject",
        "HeadObject",
        "ListMultipartUploads",
        "ListObjectsV2",
        "PutObject",
        "UploadPart",
        # What botocore's own S3 handlers call: HeadBucket to find a bucket's region after a
        # redirect (AWS), CreateSession for an S3 Express directory bucket's credentials.
        "HeadBucket",
        "CreateSession",
    }
)
"""The S3 operations the client is made with."""

ENDPOINT_PREFIXES: Final = frozenset({"s3", "sts", "portal.sso", "oidc", "signin"})
"""The services whose endpoints are kept: S3, and what the credential chain may call."""

_EXTENSIONS: Final = (".json", ".json.gz")
"""botocore's own order: a plain ``.json`` first, then its gzipped form."""

_DOCUMENTATION: Final = ("documentation", "documentationUrl")


class LeanJSONFileLoader(JSONFileLoader):
    """botocore's ``JSONFileLoader``, reading plain dicts and leaving out what is never read."""

    def load_file(self, file_path: str) -> Any:
        for extension in _EXTENSIONS:
            path = file_path + extension
            if os.path.isfile(path):
                return _leaner(file_path, json.loads(_read(path)))
        return None


def _read(path: str) -> bytes:
    if path.endswith(".gz"):
        with gzip.open(path, "rb") as compressed:
            return compressed.read()
    with open(path, "rb") as file:
        return file.read()


def lean_loader(data_path: str | None) -> Loader:
    """A loader as botocore's session makes it (``AWS_DATA_PATH`` honoured), reading with
    :class:`LeanJSONFileLoader`."""
    loader = create_loader(data_path)
    loader.file_loader = LeanJSONFileLoader()
    return loader


def _leaner(file_path: str, data: Any) -> Any:
    """``data`` as read from ``file_path`` (``<service>/<version>/service-2``, ``endpoints``),
    without what nothing here reads."""
    if not isinstance(data, dict):
        return data
    name = os.path.basename(file_path)
    if name not in ("endpoints", "service-2"):
        return data
    if name == "endpoints":
        for partition in _dicts(data.get("partitions", ())):
            services = partition.get("services")
            if isinstance(services, dict):
                partition["services"] = {
                    prefix: endpoints
                    for prefix, endpoints in services.items()
                    if prefix in ENDPOINT_PREFIXES
                }
    elif name == "service-2":
        if os.path.basename(os.path.dirname(os.path.dirname(file_path))) == "s3":
            _keep_operations(data, S3_OPERATIONS)
        _strip_documentation(data)
    # Read again from what is kept: the first reading's survivors lie scattered among what
    # was let go, holding its memory; a fresh copy is compact (1 MiB less RSS, measured).
    return json.loads(json.dumps(data))


def _keep_operations(model: dict[str, Any], kept: frozenset[str]) -> None:
    """Only the operations ``kept``, and the shapes they reach."""
    operations = model.get("operations", {})
    shapes = model.get("shapes", {})
    model["operations"] = {name: op for name, op in operations.items() if name in kept}
    reached: set[str] = set()
    todo = [
        reference
        for operation in _dicts(model["operations"].values())
        for reference in _operation_references(operation)
    ]
    while todo:
        name = todo.pop()
        if name in reached or name not in shapes:
            continue
        reached.add(name)
        todo += _shape_references(shapes[name])
    model["shapes"] = {name: shape for name, shape in shapes.items() if name in reached}


def _operation_references(operation: dict[str, Any]) -> list[str]:
    references = [operation.get("input"), operation.get("output"), *operation.get("errors", ())]
    return _shape_names(references)


def _shape_references(shape: Any) -> list[str]:
    if not isinstance(shape, dict):
        return []
    references = [*shape.get("members", {}).values()]
    references += [shape.get(field) for field in ("member", "key", "value")]
    return _shape_names(references)


def _shape_names(references: Iterable[Any]) -> list[str]:
    return [
        reference["shape"]
        for reference in references
        if isinstance(reference, dict) and isinstance(reference.get("shape"), str)
    ]


def _strip_documentation(model: dict[str, Any]) -> None:
    """Documentation out of the shapes, their member references and the operations (never
    out of ``clientContextParams``, whose documentation botocore reads)."""
    _undocument(model)
    for shape in _dicts(model.get("shapes", {}).values()):
        _undocument(shape)
        for reference in _dicts(shape.get("members", {}).values()):
            _undocument(reference)
        for field in ("member", "key", "value"):
            _undocument(shape.get(field))
    for operation in _dicts(model.get("operations", {}).values()):
        _undocument(operation)
        for field in ("input", "output"):
            _undocument(operation.get(field))
        for error in _dicts(operation.get("errors", ())):
            _undocument(error)


def _dicts(values: Iterable[Any]) -> list[dict[str, Any]]:
    return [value for value in values if isinstance(value, dict)]


def _undocument(node: Any) -> None:
    if isinstance(node, dict):
        for key in _DOCUMENTATION:
            node.pop(key, None)
