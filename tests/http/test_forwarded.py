"""``preview_url`` behind a reverse proxy: forwarded scheme and host from trusted peers only,
``PUBLIC_BASE_URL`` above all. The test client connects from 127.0.0.1, a trusted proxy by
default."""

from __future__ import annotations

import ipaddress

import pytest

from clustr_aio.web.base_url import is_trusted
from tests.conftest import JPEG
from tests.http.conftest import MakeClient
from tests.http.helpers import files_body, multipart_headers


async def preview_url(make_client: MakeClient, headers: dict[str, str], **settings: object) -> str:
    client = await make_client(**settings)
    response = await client.post(
        "/api/upload",
        data=files_body(("a.jpg", JPEG)),
        headers={**multipart_headers(), **headers},
    )
    assert response.status == 200, await response.text()
    url: str = (await response.json())["data"][0]["preview_url"]
    return url


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "photos.example.com"},
            "https://photos.example.com/uploads/a.jpg",
        ),
        (
            {"X-Forwarded-Proto": "http", "X-Forwarded-Host": "127.0.0.1:8080"},
            "http://127.0.0.1:8080/uploads/a.jpg",
        ),
        (
            {"X-Forwarded-Host": "[2001:db8::1]:8443", "X-Forwarded-Proto": "HTTPS"},
            "https://[2001:db8::1]:8443/uploads/a.jpg",
        ),
        # Each proxy appends: the last value is the one the trusted proxy set.
        (
            {"X-Forwarded-Proto": "http, https", "X-Forwarded-Host": "spoofed.example, a.example"},
            "https://a.example/uploads/a.jpg",
        ),
        (
            {"Forwarded": 'for=192.0.2.60;proto=https;host="photos.example.com:8443"'},
            "https://photos.example.com:8443/uploads/a.jpg",
        ),
        (
            {
                "Forwarded": "proto=http;host=spoofed.example, "
                "for=10.0.0.1;host=b.example;proto=https"
            },
            "https://b.example/uploads/a.jpg",
        ),
    ],
)
async def test_trusted_proxy_headers_set_scheme_and_host(
    make_client: MakeClient, headers: dict[str, str], expected: str
) -> None:
    assert await preview_url(make_client, headers) == expected


async def test_forwarded_proto_alone_keeps_the_host_header(make_client: MakeClient) -> None:
    """nginx's common ``proxy_set_header Host $host`` + ``X-Forwarded-Proto $scheme``."""
    url = await preview_url(
        make_client, {"X-Forwarded-Proto": "https", "Host": "photos.example.com"}
    )
    assert url == "https://photos.example.com/uploads/a.jpg"


async def test_without_proxy_headers_the_settings_decide(make_client: MakeClient) -> None:
    assert await preview_url(make_client, {}) == "http://127.0.0.1:5000/uploads/a.jpg"


async def test_untrusted_peers_are_not_believed(make_client: MakeClient) -> None:
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"}
    untrusted = ipaddress.ip_network("10.0.0.0/8")
    url = await preview_url(make_client, headers, forwarded_allow_ips=(untrusted,))
    assert url == "http://127.0.0.1:5000/uploads/a.jpg"
    url = await preview_url(make_client, headers, forwarded_allow_ips=())
    assert url == "http://127.0.0.1:5000/uploads/a-1.jpg"  # the second a.jpg


async def test_public_base_url_wins(make_client: MakeClient) -> None:
    headers = {"X-Forwarded-Proto": "http", "X-Forwarded-Host": "internal.example"}
    url = await preview_url(make_client, headers, public_base_url="https://photos.example.com")
    assert url == "https://photos.example.com/uploads/a.jpg"


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-Proto": "javascript", "X-Forwarded-Host": "a.example"},
        {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example/phish?"},
        {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "user@evil.example"},
        {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "a.example:99999"},
        {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "a example"},
        {"Forwarded": 'proto=https;host="evil.example/x"'},
    ],
)
async def test_malformed_values_are_ignored(
    make_client: MakeClient, headers: dict[str, str]
) -> None:
    assert await preview_url(make_client, headers) == "http://127.0.0.1:5000/uploads/a.jpg"


def test_trust_by_address_network_and_mapped_ipv4() -> None:
    loopback = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))
    assert is_trusted("127.0.0.1", loopback)
    assert is_trusted("::1", loopback)
    assert is_trusted("::ffff:127.0.0.1", loopback)  # IPv4 peer on a dual-stack socket
    assert is_trusted(None, loopback)  # a Unix socket
    assert not is_trusted("127.0.0.2", loopback)
    assert not is_trusted("10.1.2.3", loopback)
    assert is_trusted("10.1.2.3", (ipaddress.ip_network("10.0.0.0/8"),))


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
@pytest.mark.parametrize(
    ("host_header", "expected"),
    [
        ("192.168.1.20:5000", "http://192.168.1.20:5000/uploads/a.jpg"),
        ("photos.lan", "http://photos.lan/uploads/a.jpg"),
        ("[fe80::1]:5000", "http://[fe80::1]:5000/uploads/a.jpg"),
        # Anything but a host and optional port is not believed: the configured URL instead.
        ("evil.example/path", "http://127.0.0.1:5000/uploads/a.jpg"),
        ("a.example:99999", "http://127.0.0.1:5000/uploads/a.jpg"),
        ("user@a.example", "http://127.0.0.1:5000/uploads/a.jpg"),
    ],
)
async def test_a_wildcard_bind_links_to_the_host_the_client_used(
    make_client: MakeClient, host: str, host_header: str, expected: str
) -> None:
    # Untrusted peer: no forwarded header counts, only the Host header the client sent.
    url = await preview_url(
        make_client, {"Host": host_header}, host=host, port=5000, forwarded_allow_ips=()
    )
    if host == "::" and expected.startswith("http://127.0.0.1"):
        expected = expected.replace("127.0.0.1", "[::1]")
    assert url == expected


async def test_a_wildcard_bind_still_prefers_the_public_url(make_client: MakeClient) -> None:
    url = await preview_url(
        make_client,
        {"Host": "192.168.1.20:5000"},
        host="0.0.0.0",
        public_base_url="https://photos.example.com",
    )
    assert url == "https://photos.example.com/uploads/a.jpg"


async def test_the_docs_server_url_follows_the_host_too(make_client: MakeClient) -> None:
    client = await make_client(host="0.0.0.0", port=5000, forwarded_allow_ips=())
    document = await (await client.get("/openapi.json", headers={"Host": "10.1.2.3:5000"})).json()
    assert document["servers"] == [{"url": "http://10.1.2.3:5000"}]
