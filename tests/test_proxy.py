"""ProxyHeadersMiddleware on a tiny ASGI app that records the scope it was given."""

from __future__ import annotations

from collections.abc import Sequence

import httpx
import pytest
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from upload_service.ops.proxy import (
    ProxyHeadersMiddleware,
    TrustedProxies,
    parse_forwarded,
    parse_node,
)

NGINX = ("10.0.0.1", 4000)
TRUSTED = ("10.0.0.0/24", "2001:db8:1::/48")


class Recorder:
    def __init__(self) -> None:
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(dict(scope))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def seen(
    headers: Sequence[tuple[str, str]],
    *,
    peer: tuple[str, int] = NGINX,
    trusted: Sequence[str] = TRUSTED,
    path: str = "/files/",
) -> Scope:
    """The scope the app behind the middleware gets for a request from ``peer``."""
    recorder = Recorder()
    app = ProxyHeadersMiddleware(recorder, trusted=TrustedProxies(trusted))
    transport = httpx.ASGITransport(app=app, client=peer)
    async with httpx.AsyncClient(transport=transport, base_url="http://backend:8080") as http:
        encoded = [(name.encode(), value.encode("latin-1")) for name, value in headers]
        response = await http.get(path, headers=encoded)
    assert response.status_code == 204
    return recorder.scopes[0]


def url_of(scope: Scope) -> str:
    return str(Request(scope).url)


def client_of(scope: Scope) -> tuple[str, int]:
    host, port = scope["client"]
    return str(host), int(port)


# -- trusted and untrusted peers ------------------------------------------------------------------


async def test_without_proxy_headers_nothing_changes() -> None:
    scope = await seen([])
    assert url_of(scope) == "http://backend:8080/files/"
    assert client_of(scope) == NGINX
    assert scope["root_path"] == ""


async def test_x_forwarded_headers_from_a_trusted_peer_rewrite_the_scope() -> None:
    scope = await seen(
        [
            ("X-Forwarded-For", "203.0.113.7"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "uploads.example.com"),
        ]
    )
    assert scope["scheme"] == "https"
    assert url_of(scope) == "https://uploads.example.com/files/"
    assert scope["server"] == ("uploads.example.com", 443)
    assert client_of(scope) == ("203.0.113.7", 0)


@pytest.mark.parametrize("peer", [("192.0.2.9", 5555), ("10.0.1.1", 5555), ("2001:db8:2::1", 1)])
async def test_every_proxy_header_from_an_untrusted_peer_is_ignored(peer: tuple[str, int]) -> None:
    scope = await seen(
        [
            ("Forwarded", 'for=203.0.113.7;proto=https;host="evil.example"'),
            ("X-Forwarded-For", "203.0.113.7"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.example"),
            ("X-Forwarded-Port", "8443"),
            ("X-Forwarded-Prefix", "/evil"),
        ],
        peer=peer,
    )
    assert url_of(scope) == "http://backend:8080/files/"
    assert client_of(scope) == peer
    assert scope["root_path"] == ""


async def test_trusting_no_one_ignores_them_all_even_from_loopback() -> None:
    scope = await seen(
        [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil.example")],
        peer=("127.0.0.1", 1),
        trusted=(),
    )
    assert url_of(scope) == "http://backend:8080/files/"


async def test_a_star_trusts_every_peer() -> None:
    scope = await seen([("X-Forwarded-Proto", "https")], peer=("198.51.100.1", 1), trusted=("*",))
    assert url_of(scope) == "https://backend:8080/files/"


async def test_an_ipv4_mapped_peer_matches_its_ipv4_network() -> None:
    scope = await seen([("X-Forwarded-Proto", "https")], peer=("::ffff:10.0.0.1", 1))
    assert scope["scheme"] == "https"


async def test_an_ipv6_peer_is_trusted_by_its_network() -> None:
    scope = await seen(
        [("X-Forwarded-For", "2001:db8:9::5"), ("X-Forwarded-Proto", "https")],
        peer=("2001:db8:1::10", 1),
    )
    assert scope["scheme"] == "https"
    assert client_of(scope) == ("2001:db8:9::5", 0)


# -- Forwarded (RFC 7239) -------------------------------------------------------------------------


async def test_forwarded_names_the_client_proto_and_host() -> None:
    scope = await seen([("Forwarded", 'for=203.0.113.7;proto=https;host="uploads.example.com"')])
    assert url_of(scope) == "https://uploads.example.com/files/"
    assert client_of(scope) == ("203.0.113.7", 0)


async def test_forwarded_hops_are_walked_from_the_right_past_trusted_proxies() -> None:
    # client -> TLS balancer 10.0.0.5 (trusted) -> nginx 10.0.0.1 (the peer) -> the service.
    # The leftmost entry is what the client itself claimed: past the first untrusted hop, ignored.
    scope = await seen(
        [
            ("Forwarded", 'for=198.51.100.1;host="spoofed.example";proto=http'),
            (
                "Forwarded",
                'for=203.0.113.7;proto=https;host="uploads.example.com", '
                "for=10.0.0.5;proto=http;host=internal:8080",
            ),
        ]
    )
    assert url_of(scope) == "https://uploads.example.com/files/"
    assert client_of(scope) == ("203.0.113.7", 0)


async def test_forwarded_with_only_trusted_hops_takes_the_leftmost() -> None:
    scope = await seen([("Forwarded", "for=10.0.0.7;proto=https, for=10.0.0.5;proto=http")])
    assert scope["scheme"] == "https"
    assert client_of(scope) == ("10.0.0.7", 0)


async def test_forwarded_quoted_ipv6_with_port_and_host_with_port() -> None:
    scope = await seen(
        [("Forwarded", 'For="[2001:db8:cafe::17]:4711";Proto=HTTPS;Host="uploads.example:8443"')]
    )
    assert client_of(scope) == ("2001:db8:cafe::17", 4711)
    assert url_of(scope) == "https://uploads.example:8443/files/"
    assert scope["server"] == ("uploads.example", 8443)


async def test_forwarded_with_an_obfuscated_client_keeps_the_peer_address() -> None:
    scope = await seen([("Forwarded", "for=_hidden;proto=https")])
    assert scope["scheme"] == "https"
    assert client_of(scope) == NGINX


async def test_forwarded_wins_over_x_forwarded_but_x_forwarded_prefix_still_applies() -> None:
    scope = await seen(
        [
            ("Forwarded", 'for=203.0.113.7;proto=https;host="a.example"'),
            ("X-Forwarded-Proto", "http"),
            ("X-Forwarded-Host", "b.example"),
            ("X-Forwarded-Prefix", "/uploads"),
        ]
    )
    assert url_of(scope) == "https://a.example/uploads/files/"


async def test_malformed_forwarded_falls_back_to_x_forwarded() -> None:
    scope = await seen(
        [("Forwarded", 'for="unterminated;proto=https'), ("X-Forwarded-Proto", "https")]
    )
    assert scope["scheme"] == "https"
    assert url_of(scope) == "https://backend:8080/files/"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("for=192.0.2.43", [{"for": "192.0.2.43"}]),
        (
            'for="_gazonk";proto=https, For="[2001:db8::1]:4711"',
            [{"for": "_gazonk", "proto": "https"}, {"for": "[2001:db8::1]:4711"}],
        ),
        ('host="a,b;c\\"d"', [{"host": 'a,b;c"d'}]),
        ("for=192.0.2.43 ; proto=http", [{"for": "192.0.2.43", "proto": "http"}]),
        ("for=1.2.3.4;for=5.6.7.8", None),  # a parameter twice in one element
        ('for="1.2.3.4', None),
        ("for", None),
        ("=x", None),
        ("for=1.2.3.4 proto=http", None),
        ("", None),
    ],
)
def test_parse_forwarded(header: str, expected: list[dict[str, str]] | None) -> None:
    assert parse_forwarded([header]) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("192.0.2.1", ("192.0.2.1", 0)),
        ("192.0.2.1:4711", ("192.0.2.1", 4711)),
        ("[2001:db8::1]:4711", ("2001:db8::1", 4711)),
        ("[2001:db8::1]", ("2001:db8::1", 0)),
        ("2001:db8::1", ("2001:db8::1", 0)),
        ("192.0.2.1:_port", ("192.0.2.1", 0)),
        ("unknown", None),
        ("_hidden", None),
        ("[2001:db8::1", None),
        ("[2001:db8::1]x", None),
        ("example.com", None),
        ("999.1.1.1", None),
    ],
)
def test_parse_node(value: str, expected: tuple[str, int] | None) -> None:
    node = parse_node(value)
    assert (None if node is None else (str(node.address), node.port)) == expected


# -- X-Forwarded-* --------------------------------------------------------------------------------


async def test_x_forwarded_for_is_walked_from_the_right_past_trusted_proxies() -> None:
    scope = await seen([("X-Forwarded-For", "198.51.100.1, 203.0.113.7, 10.0.0.5")])
    assert client_of(scope) == ("203.0.113.7", 0)


async def test_x_forwarded_lists_line_up_with_the_hops() -> None:
    # Each proxy appended its own view: the balancer saw https from the client, nginx http.
    scope = await seen(
        [
            ("X-Forwarded-For", "203.0.113.7, 10.0.0.5"),
            ("X-Forwarded-Proto", "https, http"),
            ("X-Forwarded-Host", "uploads.example.com, internal"),
        ]
    )
    assert url_of(scope) == "https://uploads.example.com/files/"


async def test_x_forwarded_port_completes_a_host_without_a_port() -> None:
    scope = await seen(
        [
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "uploads.example.com"),
            ("X-Forwarded-Port", "8443"),
        ]
    )
    assert url_of(scope) == "https://uploads.example.com:8443/files/"
    assert scope["server"] == ("uploads.example.com", 8443)


async def test_x_forwarded_port_never_overrides_the_port_the_host_carries() -> None:
    scope = await seen(
        [("X-Forwarded-Host", "uploads.example.com:9000"), ("X-Forwarded-Port", "80")]
    )
    assert url_of(scope) == "http://uploads.example.com:9000/files/"


async def test_x_forwarded_port_alone_applies_to_the_host_header() -> None:
    scope = await seen([("Host", "uploads.example.com"), ("X-Forwarded-Port", "8081")])
    assert url_of(scope) == "http://uploads.example.com:8081/files/"


async def test_a_default_port_is_left_out_of_the_host() -> None:
    scope = await seen(
        [
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "uploads.example.com"),
            ("X-Forwarded-Port", "443"),
        ]
    )
    assert url_of(scope) == "https://uploads.example.com/files/"


async def test_an_ipv6_forwarded_host() -> None:
    scope = await seen([("X-Forwarded-Host", "[2001:db8::2]:8443"), ("X-Forwarded-Proto", "https")])
    assert url_of(scope) == "https://[2001:db8::2]:8443/files/"
    assert scope["server"] == ("2001:db8::2", 8443)


async def test_x_forwarded_prefix_becomes_the_root_path() -> None:
    scope = await seen([("X-Forwarded-Prefix", "/uploads/")], path="/files/abc")
    assert scope["root_path"] == "/uploads"
    assert scope["path"] == "/uploads/files/abc"
    assert scope["raw_path"] == b"/uploads/files/abc"
    assert url_of(scope) == "http://backend:8080/uploads/files/abc"
    assert str(Request(scope).base_url) == "http://backend:8080/uploads/"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Forwarded-Proto", "gopher"),
        ("X-Forwarded-Proto", "https extra"),
        ("X-Forwarded-Host", "evil.example/path"),
        ("X-Forwarded-Host", "evil.example:99999"),
        ("X-Forwarded-Host", "user@evil.example"),
        ("X-Forwarded-Host", "[not-ipv6]"),
        ("X-Forwarded-Host", ""),
        ("X-Forwarded-Port", "-1"),
        ("X-Forwarded-Port", "https"),
        ("X-Forwarded-Port", "70000"),
        ("X-Forwarded-Port", "\xb2"),  # a digit to str.isdigit(), not to HTTP
        ("X-Forwarded-Prefix", "uploads"),
        ("X-Forwarded-Prefix", "/up/../files"),
        ("X-Forwarded-Prefix", "//evil.example"),
        ("X-Forwarded-Prefix", "/a b"),
        ("X-Forwarded-For", "not-an-ip"),
        ("X-Forwarded-For", "1.2.3.4.5"),
        ("Forwarded", "for=1.2.3.4;;;"),
        ("Forwarded", 'host="evil.example/x";proto=gopher;for="[::1"'),
        ("Forwarded", "x" * 10_000),
        ("X-Forwarded-For", ",".join(["10.0.0.9"] * 2000)),
    ],
)
async def test_malformed_values_are_ignored(name: str, value: str) -> None:
    scope = await seen([(name, value)], path="/files/x")
    assert url_of(scope) == "http://backend:8080/files/x"
    assert scope["root_path"] == ""
    assert client_of(scope) == NGINX


async def test_a_malformed_value_leaves_the_others_in_effect() -> None:
    scope = await seen(
        [
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "bad/host"),
            ("X-Forwarded-Port", "x"),
        ]
    )
    assert url_of(scope) == "https://backend:8080/files/"


async def test_lifespan_and_other_scopes_pass_through() -> None:
    recorder = Recorder()
    app = ProxyHeadersMiddleware(recorder, trusted=TrustedProxies(["*"]))
    scope: Scope = {"type": "lifespan"}

    async def receive() -> dict[str, str]:
        return {"type": "lifespan.startup"}

    async def send(message: object) -> None:
        pass

    await app(scope, receive, send)
    assert recorder.scopes == [{"type": "lifespan"}]
