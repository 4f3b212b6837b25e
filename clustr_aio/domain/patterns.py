"""The text patterns of the API's identifiers, shared by its models (the OpenAPI schemas,
request validation) and by routes that need them without importing the models' pydantic."""

from __future__ import annotations

from typing import Final

__all__ = ["ID_PATTERN", "SHA256_PATTERN"]

ID_PATTERN: Final = "^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
"""A file's id: a UUIDv7, lower-case (time-sortable: the first 48 bits are Unix milliseconds)."""
SHA256_PATTERN: Final = "^[0-9a-fA-F]{64}$"
