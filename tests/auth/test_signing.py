"""Signed file URLs, without HTTP: what verifies, what does not, rotation."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest

from clustr_aio.auth.signing import sign_path, verify_path
from clustr_aio.domain.errors import Forbidden

A, B = "a" * 32, "b" * 32


def query(path: str, secrets: tuple[str, ...], ttl: int = 60, now: float = 1000) -> dict[str, str]:
    return dict(parse_qsl(sign_path(path, secrets, ttl, now=now)))


def test_a_signature_verifies_until_it_expires() -> None:
    signed = query("/uploads/a.jpg", (A,))
    assert signed["expires"] == "1060"
    verify_path("/uploads/a.jpg", signed, (A,), now=1059)
    with pytest.raises(Forbidden, match="expired"):
        verify_path("/uploads/a.jpg", signed, (A,), now=1060)


@pytest.mark.parametrize(
    "change",
    [
        {"signature": "x"},
        {"expires": "1061"},
        {"expires": "-5"},
        {"expires": "1e3"},
        {"expires": "٣"},  # an Arabic-Indic digit: isdigit(), but not ours
        {"signature": "é"},
    ],
)
def test_anything_altered_is_not_valid(change: dict[str, str]) -> None:
    signed = query("/uploads/a.jpg", (A,)) | change
    with pytest.raises(Forbidden, match="not valid"):
        verify_path("/uploads/a.jpg", signed, (A,), now=1000)


def test_a_signature_belongs_to_its_path() -> None:
    with pytest.raises(Forbidden, match="not valid"):
        verify_path("/uploads/b.jpg", query("/uploads/a.jpg", (A,)), (A,), now=1000)


def test_unsigned_is_refused() -> None:
    with pytest.raises(Forbidden, match="only at a signed URL"):
        verify_path("/uploads/a.jpg", {"expires": "1060"}, (A,), now=1000)


def test_rotation_signs_with_the_first_and_verifies_with_all() -> None:
    old = query("/uploads/a.jpg", (A,))
    new = query("/uploads/a.jpg", (B, A))
    assert new["signature"] != old["signature"]
    for signed in (old, new):
        verify_path("/uploads/a.jpg", signed, (B, A), now=1000)
    with pytest.raises(Forbidden):
        verify_path("/uploads/a.jpg", old, (B,), now=1000)
