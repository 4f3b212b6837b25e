"""The URL a client reached this server at, for the links in a response (``preview_url``,
the OpenAPI document's server). :func:`request_base_url` is the one place it is decided.

In order:

1. ``PUBLIC_BASE_URL`` when set: the operator said so.
2. A request from a trusted proxy (``FORWARDED_ALLOW_IPS``, default the loopback addresses, as
   uvicorn's and gunicorn's ``forwarded_allow_ips``) that carries ``X-Forwarded-Proto`` /
   ``X-Forwarded-Host`` or, failing those, RFC 7239 ``Forwarded``: that scheme and host, with
   the ``Host`` header standing in for a host the proxy did not forward. A proxy appends to
   these headers, so of several values the last, set by the trusted proxy itself, is used.
3. With a wildcard ``HOST`` (``0.0.0.0``, ``::``: every interface), the ``Host`` header the
   client sent: a phone on the LAN that reached ``192.168.1.20:5000`` gets links to it, not
   to the server's own loopback address.
4. Otherwise ``http://HOST:PORT`` from the settings.

A value that is not a plain ``http``/``https`` scheme or ``host[:port]`` is ignored: it ends up
in URLs handed to other clients.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit

from aiohttp import hdrs, web
from multidict import CIMultiDictProxy

from clustr_aio.settings import IPNetwork
from clustr_aio.web.keys import SETTINGS

__all__ = ["client_address", "forwarded_base_url", "request_base_url"]

_SCHEMES: Final = frozenset({"http", "https"})
# host or IPv4 or [IPv6], optional port: no userinfo, path, spaces or other URL syntax.
_HOST_PORT: Final = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:\d{1,5})?", re.ASCII)
# One forwarded-pair of RFC 7239: token=token or token="quoted string".
_PAIR: Final = re.compile(r'\s*([A-Za-z]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)\s*', re.ASCII)


def request_base_url(request: web.Request) -> str:
    """``scheme://host[:port]`` to build this response's URLs with (no trailing slash)."""
    settings = request.app[SETTINGS]
    if settings.public_base_url is not None:
        return settings.public_base_url
    if is_trusted(request.remote, settings.forwarded_allow_ips):
        forwarded = forwarded_base_url(request.headers, request.host)
        if forwarded is not None:
            return forwarded
    if _is_wildcard(settings.host):
        host = request.headers.get(hdrs.HOST, "")
        if _is_host_port(host):
            return f"{request.scheme}://{host}"
    return settings.base_url


@functools.lru_cache(maxsize=8)
def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False  # a host name


def is_trusted(peer: str | None, networks: Iterable[IPNetwork]) -> bool:
    """Whether the connection came from one of ``networks``. A Unix-socket peer (no address)
    is trusted: only local processes allowed by the socket's permissions can connect."""
    if not peer:
        return True
    if not isinstance(networks, tuple):
        return _is_trusted(peer, networks)
    # Every request asks this twice or more (rate limits' client address, the links' base
    # URL): parsing the address each time was 4 % of a small upload's CPU (issue 16). Kept
    # by the networks' identity (the settings' tuple), whose hash is computed anew each time.
    key = (peer, id(networks))
    known = _VERDICTS.get(key)
    if known is not None and known[0] is networks:
        return known[1]
    if len(_VERDICTS) >= _MAX_VERDICTS:
        _VERDICTS.clear()
    verdict = _is_trusted(peer, networks)
    _VERDICTS[key] = (networks, verdict)  # holding the tuple: its id is not reused meanwhile
    return verdict


_VERDICTS: Final[dict[tuple[str, int], tuple[tuple[IPNetwork, ...], bool]]] = {}
_MAX_VERDICTS: Final = 1024


def _is_trusted(peer: str, networks: Iterable[IPNetwork]) -> bool:
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 on a dual-stack socket
    return any(address in network for network in networks)


def forwarded_base_url(headers: CIMultiDictProxy[str], host_header: str) -> str | None:
    """The base URL the proxy headers describe, or None when there are none (or none valid)."""
    scheme = _last(headers.getall(hdrs.X_FORWARDED_PROTO, []))
    host = _last(headers.getall(hdrs.X_FORWARDED_HOST, []))
    if scheme is None and host is None:
        scheme, host = _from_forwarded(headers.getall(hdrs.FORWARDED, []))
        if scheme is None and host is None:
            return None
    scheme = (scheme or "http").lower()
    host = host or host_header
    if scheme not in _SCHEMES or not _is_host_port(host):
        return None
    return f"{scheme}://{host}"


def client_address(request: web.Request) -> str:
    """The client's address, for rate limits: from a trusted proxy, the address it says it
    was reached from (the last ``X-Forwarded-For`` item, else ``Forwarded``'s last ``for``);
    otherwise the connection's peer."""
    peer = request.remote or ""
    if is_trusted(peer, request.app[SETTINGS].forwarded_allow_ips):
        forwarded = _last(request.headers.getall(hdrs.X_FORWARDED_FOR, []))
        if forwarded is None:
            forwarded = _forwarded_for(request.headers.getall(hdrs.FORWARDED, []))
        if forwarded is not None:
            return forwarded
    return peer


def _forwarded_for(values: list[str]) -> str | None:
    elements = [element for value in values for element in _split_elements(value)]
    for match in _PAIR.finditer(elements[-1] if elements else ""):
        if match[1].lower() == "for":
            return match[2].strip('"') or None
    return None


def _last(values: list[str]) -> str | None:
    """The last non-empty item of comma-separated header values."""
    items = [item.strip() for value in values for item in value.split(",")]
    items = [item for item in items if item]
    return items[-1] if items else None


def _from_forwarded(values: list[str]) -> tuple[str | None, str | None]:
    """``proto`` and ``host`` of the last element of ``Forwarded`` headers."""
    elements = [element for value in values for element in _split_elements(value)]
    if not elements:
        return None, None
    pairs: dict[str, str] = {}
    for match in _PAIR.finditer(elements[-1]):
        key, raw = match[1].lower(), match[2]
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        pairs[key] = raw
    return pairs.get("proto") or None, pairs.get("host") or None


def _split_elements(value: str) -> list[str]:
    """Split at commas outside quoted strings."""
    elements, current, quoted, escaped = [], "", False, False
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            elements.append(current)
            current = ""
            continue
        current += char
    elements.append(current)
    return [element for element in elements if element.strip()]


def _is_host_port(text: str) -> bool:
    if not _HOST_PORT.fullmatch(text):
        return False
    try:
        parts = urlsplit(f"//{text}")
        _ = parts.port  # raises for a port over 65535
    except ValueError:
        return False
    return bool(parts.hostname)
