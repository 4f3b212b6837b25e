"""Signed, expiring file URLs (PUBLIC_FILES=false): ``<path>?<parameters>&expires=<unix time>&
signature=<base64url HMAC-SHA256>``. :func:`sign_path` is the one place a URL is signed (the
stored file's ``preview_url``, thumbnail URLs, any other file URL the API hands out);
:func:`verify_path` the one place one is checked. Several secrets may be configured: the first
signs, each verifies, so a secret is rotated by putting the new one first and dropping the old
one once the URLs it signed have expired.

The HMAC covers the expiry, the path and every other query parameter of the URL (a thumbnail's
``size`` and ``format`` choose what is rendered: a client must not turn a URL for the 256-pixel
WebP into one for the 1024-pixel AVIF). Parameters are signed in a canonical order and
encoding, so their order in the URL does not matter; one added, removed or changed makes the
URL invalid, as does a repeated ``expires`` or ``signature``. A URL without other parameters
signs ``"<expires>:<path>"``, as before parameters were covered.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Final
from urllib.parse import quote, urlencode

from clustr_aio.domain.errors import Forbidden

__all__ = ["EXPIRES", "SIGNATURE", "sign_path", "verify_path"]

EXPIRES: Final = "expires"
SIGNATURE: Final = "signature"
_OWN: Final = frozenset({EXPIRES, SIGNATURE})
_UNSIGNED: Final = "this file is served only at a signed URL from the API"
_INVALID: Final = "this file URL's signature is not valid"
_EXPIRED: Final = "this file URL has expired; ask the API for a new one"


def _signature(secret: str, material: bytes) -> str:
    mac = hmac.new(secret.encode(), material, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def _material(path: str, expires: int, parameters: Iterable[tuple[str, str]]) -> bytes:
    """What is signed: the expiry, the (unescaped) path, and the other parameters sorted and
    percent-encoded alike on both sides (a name or value holding ``&`` or ``=`` cannot pass
    for two parameters)."""
    covered = sorted((name, value) for name, value in parameters if name not in _OWN)
    text = f"{expires}:{path}"
    if covered:
        text += "?" + urlencode(covered, quote_via=quote, safe="")
    return text.encode()


def sign_path(
    path: str,
    secrets: Sequence[str],
    ttl: int,
    *,
    parameters: Iterable[tuple[str, str]] = (),
    now: float | None = None,
) -> str:
    """The query string that signs ``path`` (unescaped, as ``request.path`` will read it) with
    ``parameters`` (decoded name and value pairs, as ``request.query`` will read them) until
    ``ttl`` seconds from now: ``expires=…&signature=…``, to go after the parameters."""
    expires = int(time.time() if now is None else now) + ttl
    signature = _signature(secrets[0], _material(path, expires, parameters))
    return f"{EXPIRES}={expires}&{SIGNATURE}={signature}"


def verify_path(
    path: str, query: Mapping[str, str], secrets: Sequence[str], *, now: float | None = None
) -> None:
    """Raise :class:`Forbidden` unless ``query`` (a request's: its ``items()`` are every
    parameter, repeated ones included) signs ``path`` and its other parameters with one of
    ``secrets`` and has not expired. Checked before the file is looked for: the answer says
    nothing about it."""
    pairs = list(query.items())
    expires_values = [value for name, value in pairs if name == EXPIRES]
    signatures = [value for name, value in pairs if name == SIGNATURE]
    if not expires_values or not signatures:
        raise Forbidden(_UNSIGNED)
    if len(expires_values) > 1 or len(signatures) > 1:
        raise Forbidden(_INVALID)  # which one would count is a question not worth answering
    expires_text, signature = expires_values[0], signatures[0]
    expires_text = expires_text if expires_text.isascii() else ""
    if not expires_text.isdigit() or len(expires_text) > 12 or not signature.isascii():
        raise Forbidden(_INVALID)
    expires = int(expires_text)
    material = _material(path, expires, pairs)
    valid = False
    for secret in secrets:  # every one, whatever matched: the time says nothing either
        valid |= hmac.compare_digest(_signature(secret, material), signature)
    if not valid:
        raise Forbidden(_INVALID)
    if expires <= (time.time() if now is None else now):
        raise Forbidden(_EXPIRED)
