"""Proxy headers, believed only from trusted peers: a pure ASGI middleware.

Behind a reverse proxy the service sees the proxy's connection, not the client's: the scheme (TLS
ends at the proxy), the host, the path prefix the proxy strips and the client address arrive as
headers. From a peer in ``UPLOAD_TRUSTED_PROXIES`` this middleware rewrites the scope with them
(``scheme``, the ``Host`` header and ``server``, ``root_path``/``path``, ``client``), so every URL
the app builds (``Location``) is the one the client used. From any other peer the headers are
ignored, and so is every malformed value: it never fails a request.

Precedence: an RFC 7239 ``Forwarded`` header that parses wins over ``X-Forwarded-For``/``-Proto``/
``-Host``/``-Port``; ``X-Forwarded-Prefix`` (which ``Forwarded`` has no parameter for) applies with
either. Each proxy appends its hop on the right, so the hops are walked from the right, skipping
those that are trusted proxies themselves: the first untrusted one is the client, and its hop's
values (what the outermost proxy that faced the client saw) are used. A proxy that sets only some
headers must clear the others, or its clients can send them through it.

The scope is changed in place, as uvicorn's own proxy middleware does, so the server's access log
names the client rather than the proxy.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_DEFAULT_PORTS = {"http": 80, "https": 443}
_TCHAR = r"[!#$%&'*+.^_`|~0-9A-Za-z-]"
# One forwarded-pair: token "=" (quoted-string / value). Unquoted values are read leniently
# (``host=example.com:8443`` is common although RFC 7239 wants it quoted).
_PAIR = re.compile(rf'[ \t]*({_TCHAR}+)=(?:"((?:[^"\\]|\\.)*)"|([^;,"\s]*))[ \t]*')
_HOST = re.compile(
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)(?::(\d{1,5}))?"
)
_PREFIX = re.compile(r"(?:/[A-Za-z0-9._~-]*)+")
_MAX_HEADER = 8192  # longer proxy headers are ignored rather than walked


class TrustedProxies:
    """The peers whose proxy headers are believed: IP networks, or ``*`` for every peer."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.everyone = False
        networks: list[IPNetwork] = []
        for entry in entries:
            if entry == "*":
                self.everyone = True
            else:
                networks.append(ipaddress.ip_network(entry, strict=False))
        self.networks = tuple(networks)

    def __bool__(self) -> bool:
        return self.everyone or bool(self.networks)

    def __contains__(self, host: object) -> bool:
        if self.everyone:
            return True
        address = host if isinstance(host, IPAddress) else _ip(host)
        return address is not None and any(address in network for network in self.networks)


@dataclass(frozen=True, slots=True)
class Node:
    """A hop's address (``for=``, an ``X-Forwarded-For`` entry): an IP, and a port or 0."""

    address: IPAddress
    port: int = 0


@dataclass(frozen=True, slots=True)
class Forwarding:
    """What the trusted headers say about the client's request (None: unknown, keep as is)."""

    client: Node | None = None
    proto: str | None = None
    host: str | None = None
    port: int | None = None
    prefix: str | None = None


def _ip(value: object) -> IPAddress | None:
    if not isinstance(value, str):
        return None
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return address


def parse_node(value: str | None) -> Node | None:
    """``192.0.2.1``, ``192.0.2.1:4711``, ``[2001:db8::1]:4711``, bare ``2001:db8::1``; None for
    ``unknown``, obfuscated identifiers (``_hidden``) and anything malformed."""
    if value is None:
        return None
    text = value.strip()
    port_text = ""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host = text
    address = _ip(host)
    if address is None:
        return None
    port = 0
    if port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536:
        port = int(port_text)
    return Node(address, port)


def parse_forwarded(values: Sequence[str]) -> list[dict[str, str]] | None:
    """The elements of ``Forwarded`` header lines, left to right, each as lower-cased parameter
    names to values (quotes removed); None when any part is malformed."""
    text = ",".join(values)
    if len(text) > _MAX_HEADER:
        return None
    elements: list[dict[str, str]] = []
    current: dict[str, str] = {}
    position = 0
    while True:
        match = _PAIR.match(text, position)
        if match is None:
            return None
        name = match[1].lower()
        if name in current:  # RFC 7239: a parameter occurs at most once per element
            return None
        quoted = match[2]
        current[name] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else match[3]
        position = match.end()
        if position == len(text):
            elements.append(current)
            return elements
        if text[position] == ",":
            elements.append(current)
            current = {}
        elif text[position] != ";":
            return None
        position += 1


def _split(values: Sequence[str]) -> list[str]:
    """A comma-separated list header, all its lines, left to right."""
    text = ",".join(values)
    if len(text) > _MAX_HEADER:
        return []
    return [part.strip() for part in text.split(",")]


def _nth_from_right(values: list[str], hops: int) -> str | None:
    """The entry that the proxy ``hops`` places from the right added; the leftmost entry when
    fewer proxies appended to the header than forwarded the request (most overwrite it)."""
    if not values:
        return None
    return values[max(0, len(values) - 1 - hops)]


def _walk(nodes: list[Node | None], trusted: TrustedProxies) -> tuple[int, Node | None]:
    """From the right, the index of the first hop that is not a trusted proxy (the client), and
    its address; a hop without a usable address ends the walk there."""
    for index in range(len(nodes) - 1, -1, -1):
        node = nodes[index]
        if node is None or node.address not in trusted or index == 0:
            return index, node
    return 0, None


def _proto(value: str | None) -> str | None:
    if value is None:
        return None
    proto = value.strip().lower()
    return proto if proto in _DEFAULT_PORTS else None


def _host(value: str | None) -> str | None:
    if value is None:
        return None
    match = _HOST.fullmatch(value.strip())
    if match is None:
        return None
    if match[1].startswith("[") and not isinstance(_ip(match[1][1:-1]), ipaddress.IPv6Address):
        return None
    if match[2] is not None and not 0 < int(match[2]) < 65536:
        return None
    return match[0]


def _port(value: str | None) -> int | None:
    if value is None or not (value.isascii() and value.isdigit()):
        return None
    port = int(value)
    return port if 0 < port < 65536 else None


def _prefix(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip()
    if not _PREFIX.fullmatch(text) or any(part in (".", "..") for part in text.split("/")):
        return None
    if "//" in text:
        return None
    return text.rstrip("/")


def forwarding(headers: Iterable[tuple[bytes, bytes]], trusted: TrustedProxies) -> Forwarding:
    """What a trusted peer's proxy headers say; every value that does not parse is left out."""
    found: dict[bytes, list[str]] = {}
    for name, value in headers:
        if name in _HEADERS:
            found.setdefault(name, []).append(value.decode("latin-1"))
    prefixes = _split(found.get(b"x-forwarded-prefix", []))
    elements = parse_forwarded(found[b"forwarded"]) if b"forwarded" in found else None
    if elements:
        index, client = _walk([parse_node(element.get("for")) for element in elements], trusted)
        chosen = elements[index]
        hops = len(elements) - 1 - index
        return Forwarding(
            client=client,
            proto=_proto(chosen.get("proto")),
            host=_host(chosen.get("host")),
            prefix=_prefix(_nth_from_right(prefixes, hops)),
        )
    chain = _split(found.get(b"x-forwarded-for", []))
    index, client = _walk([parse_node(entry) for entry in chain], trusted)
    hops = len(chain) - 1 - index if chain else 0
    return Forwarding(
        client=client,
        proto=_proto(_nth_from_right(_split(found.get(b"x-forwarded-proto", [])), hops)),
        host=_host(_nth_from_right(_split(found.get(b"x-forwarded-host", [])), hops)),
        port=_port(_nth_from_right(_split(found.get(b"x-forwarded-port", [])), hops)),
        prefix=_prefix(_nth_from_right(prefixes, hops)),
    )


_HEADERS = frozenset(
    {
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-forwarded-prefix",
    }
)


def apply(scope: Scope, found: Forwarding) -> None:
    """Rewrite ``scope`` in place with what the proxy headers say."""
    if found.client is not None:
        scope["client"] = (str(found.client.address), found.client.port)
    if found.proto is not None:
        scope["scheme"] = found.proto
    scheme = str(scope.get("scheme", "http"))
    host = found.host
    if host is None and found.port is not None:  # the port alone: with the Host passed on
        host = _host(_header(scope, b"host"))
    if host is not None:
        # X-Forwarded-Port only completes a host without a port: Host carries the client's.
        match = _HOST.fullmatch(host)
        assert match is not None
        name, port_text = match[1], match[2]
        port = int(port_text) if port_text else found.port or _DEFAULT_PORTS[scheme]
        if port_text is None and port != _DEFAULT_PORTS[scheme]:
            host = f"{name}:{port}"
        headers = [(key, value) for key, value in scope["headers"] if key != b"host"]
        scope["headers"] = [(b"host", host.encode("latin-1")), *headers]
        scope["server"] = (name.strip("[]"), port)
    if found.prefix:
        scope["root_path"] = found.prefix + scope.get("root_path", "")
        scope["path"] = found.prefix + scope["path"]
        if "raw_path" in scope and scope["raw_path"] is not None:
            scope["raw_path"] = found.prefix.encode("latin-1") + scope["raw_path"]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class ProxyHeadersMiddleware:
    """Believe ``Forwarded``/``X-Forwarded-*`` from trusted peers only (see the module)."""

    def __init__(self, app: ASGIApp, trusted: TrustedProxies) -> None:
        self.app = app
        self.trusted = trusted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.trusted:
            peer = scope.get("client")
            if self.trusted.everyone or (peer is not None and peer[0] in self.trusted):
                apply(scope, forwarding(scope["headers"], self.trusted))
        await self.app(scope, receive, send)
