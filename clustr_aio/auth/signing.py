"""Signed, expiring file URLs (PUBLIC_FILES=false): ``<path>?expires=<unix time>&signature=<
base64url HMAC-SHA256 of "expires:path">``. :func:`sign_path` is the one place a URL is signed
(the stored file's ``preview_url`` and any other file URL the API hands out); :func:`verify_path`
the one place one is checked. Several secrets may be configured: the first signs, each
verifies, so a secret is rotated by putting the new one first and dropping the old one once the
URLs it signed have expired."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from typing import Final

from clustr_aio.domain.errors import Forbidden

__all__ = ["EXPIRES", "SIGNATURE", "sign_path", "verify_path"]

EXPIRES: Final = "expires"
SIGNATURE: Final = "signature"
_UNSIGNED: Final = "this file is served only at a signed URL from the API"
_INVALID: Final = "this file URL's signature is not valid"
_EXPIRED: Final = "this file URL has expired; ask the API for a new one"


def _signature(secret: str, path: str, expires: int) -> str:
    mac = hmac.new(secret.encode(), f"{expires}:{path}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def sign_path(path: str, secrets: Sequence[str], ttl: int, *, now: float | None = None) -> str:
    """The query string that signs ``path`` (unescaped, as ``request.path`` will read it)
    until ``ttl`` seconds from now: ``expires=…&signature=…``."""
    expires = int(time.time() if now is None else now) + ttl
    return f"{EXPIRES}={expires}&{SIGNATURE}={_signature(secrets[0], path, expires)}"


def verify_path(
    path: str, query: Mapping[str, str], secrets: Sequence[str], *, now: float | None = None
) -> None:
    """Raise :class:`Forbidden` unless ``query`` signs ``path`` with one of ``secrets`` and has
    not expired. Checked before the file is looked for: the answer says nothing about it."""
    expires_text, signature = query.get(EXPIRES), query.get(SIGNATURE)
    if expires_text is None or signature is None:
        raise Forbidden(_UNSIGNED)
    expires_text = expires_text if expires_text.isascii() else ""
    if not expires_text.isdigit() or len(expires_text) > 12 or not signature.isascii():
        raise Forbidden(_INVALID)
    expires = int(expires_text)
    valid = False
    for secret in secrets:  # every one, whatever matched: the time says nothing either
        valid |= hmac.compare_digest(_signature(secret, path, expires), signature)
    if not valid:
        raise Forbidden(_INVALID)
    if expires <= (time.time() if now is None else now):
        raise Forbidden(_EXPIRED)
