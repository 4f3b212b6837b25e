"""Signed file URLs, without HTTP: what verifies, what does not, rotation."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qsl

import pytest
from multidict import MultiDict

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


def signed_with(path: str, parameters: list[tuple[str, str]]) -> MultiDict[str]:
    """The query a request of the URL :func:`sign_path` makes for ``parameters`` would have."""
    signature = sign_path(path, (A,), 60, parameters=parameters, now=1000)
    return MultiDict(parameters + parse_qsl(signature))


THUMBNAIL = "/api/files/019ad8c4-6f3a-7c21-9e4b-3f5d2a1b0c9e/thumbnail"


def test_the_other_parameters_are_signed_in_any_order() -> None:
    signed = signed_with(THUMBNAIL, [("size", "256"), ("format", "webp")])
    verify_path(THUMBNAIL, signed, (A,), now=1000)
    reordered = MultiDict(sorted(signed.items(), reverse=True))
    assert list(reordered.items()) != list(signed.items())
    verify_path(THUMBNAIL, reordered, (A,), now=1000)


@pytest.mark.parametrize(
    "change",
    [
        lambda q: q.update(size="1024"),  # another rendition
        lambda q: q.update(format="avif"),
        lambda q: q.popone("format"),
        lambda q: q.add("owner", "bob"),  # any parameter at all
        lambda q: q.add("size", "256"),  # repeated: which one would count?
        lambda q: q.add("expires", q["expires"]),
        lambda q: q.add("signature", q["signature"]),
        lambda q: q.update(size="256&format=avif"),  # no splicing of pairs into a value
    ],
)
def test_a_changed_parameter_is_not_valid(change: Callable[[MultiDict[str]], object]) -> None:
    signed = signed_with(THUMBNAIL, [("size", "256"), ("format", "webp")])
    change(signed)
    with pytest.raises(Forbidden, match="not valid"):
        verify_path(THUMBNAIL, signed, (A,), now=1000)


def test_a_parameter_added_to_a_url_signed_without_any_is_not_valid() -> None:
    signed = MultiDict(query(THUMBNAIL, (A,)))
    verify_path(THUMBNAIL, signed, (A,), now=1000)
    signed.add("size", "1024")
    with pytest.raises(Forbidden, match="not valid"):
        verify_path(THUMBNAIL, signed, (A,), now=1000)


def test_an_empty_value_is_signed_as_such() -> None:
    signed = signed_with(THUMBNAIL, [("size", "")])
    verify_path(THUMBNAIL, signed, (A,), now=1000)
    signed.popone("size")
    with pytest.raises(Forbidden, match="not valid"):
        verify_path(THUMBNAIL, signed, (A,), now=1000)
