"""A real ``upload-service serve`` behind a real nginx that terminates TLS, configured with the
repository's ``deploy/nginx/upload_service.conf``: ``Location`` names the https URL the client
used, spoofed proxy headers get nowhere, an untrusted peer's are ignored, and a request has one id
in nginx's log, the server's log and the answer."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.nginx import Certificate, Nginx, nginx_binary
from tests.e2e.support import HTTP_TIMEOUT, TUS, ServerProcess, Servers, attach_log_on_failure

pytestmark = pytest.mark.e2e

OFFSET_CT = "application/offset+octet-stream"
SPOOFED = {
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Proto": "http",
    "X-Forwarded-Prefix": "/evil",
    "X-Forwarded-Port": "9999",
    "Forwarded": 'for=198.51.100.1;proto=http;host="evil.example"',
}


@pytest.fixture
def server_database() -> dict[str, str]:
    """The embedded SQLite database: proxy headers do not depend on the database."""
    return {}


@dataclass
class Proxied:
    nginx: Nginx
    server: ServerProcess
    certificate: Certificate

    def client(self) -> httpx.Client:
        return httpx.Client(timeout=HTTP_TIMEOUT, verify=self.certificate.client_context())


@pytest.fixture
def proxied(request: pytest.FixtureRequest, servers: Servers, tmp_path: Path) -> Iterator[Proxied]:
    nginx_binary()  # skip (or fail under CI=true) before anything starts
    certificate = Certificate.make(tmp_path / "tls")
    server = servers.start()  # UPLOAD_TRUSTED_PROXIES left at its default: loopback
    nginx = Nginx(tmp_path / "nginx", [f"127.0.0.1:{server.port}"], tls=certificate)
    attach_log_on_failure(request.node, f"nginx error log (pid {nginx.pid})", nginx.error_log)
    try:
        nginx.wait_ready()
        yield Proxied(nginx=nginx, server=server, certificate=certificate)
    finally:
        nginx.stop()


def created(client: httpx.Client, url: str, **headers: str) -> str:
    response = client.post(url, headers={**TUS, "Upload-Length": "5", **headers})
    assert response.status_code == 201, response.text
    return response.headers["Location"]


def test_location_behind_tls_nginx_is_the_https_url_the_client_used(proxied: Proxied) -> None:
    public = proxied.nginx.base_url
    assert public.startswith("https://127.0.0.1:")
    with proxied.client() as client:
        location = created(client, f"{public}/files/")
        assert location.startswith(f"{public}/files/")
        # The Location works as it is: PATCH, HEAD and download through nginx over TLS.
        patched = client.patch(
            location,
            headers={**TUS, "Upload-Offset": "0", "Content-Type": OFFSET_CT},
            content=b"hello",
        )
        assert patched.status_code == 204, patched.text
        assert client.head(location, headers=TUS).headers["Upload-Offset"] == "5"

        # Parts named by the absolute https URLs they were given make a final upload.
        parts = [created(client, f"{public}/files/", **{"Upload-Concat": "partial"}) for _ in "ab"]
        final = client.post(
            f"{public}/files/", headers={**TUS, "Upload-Concat": "final;" + " ".join(parts)}
        )
        assert final.status_code == 201, final.text
        assert final.headers["Location"].startswith(f"{public}/files/")


def test_spoofed_proxy_headers_through_nginx_get_nowhere(proxied: Proxied) -> None:
    """nginx overwrites X-Forwarded-Host/-Proto and clears Forwarded, -Prefix and -Port."""
    public = proxied.nginx.base_url
    with proxied.client() as client:
        location = created(client, f"{public}/files/", **SPOOFED)
        assert location.startswith(f"{public}/files/")


def test_proxy_headers_from_an_untrusted_peer_are_ignored(proxied: Proxied) -> None:
    """Straight to the server from 127.0.0.2, which the default (127.0.0.1, ::1) does not trust;
    from 127.0.0.1 the same headers are believed."""
    direct = proxied.server.base_url
    untrusted = httpx.HTTPTransport(local_address="127.0.0.2")
    spoofed = {**SPOOFED, "X-Forwarded-Proto": "https"}
    with httpx.Client(transport=untrusted, timeout=HTTP_TIMEOUT) as client:
        location = created(client, f"{direct}/files/", **spoofed)
        assert location.startswith(f"{direct}/files/")
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        location = created(
            client,
            f"{direct}/files/",
            **{"X-Forwarded-Proto": "https", "X-Forwarded-Host": "uploads.example.com"},
        )
        assert location.startswith("https://uploads.example.com/files/")


def test_one_request_id_in_nginx_the_server_and_the_answer(proxied: Proxied) -> None:
    """Without an X-Request-Id nginx passes its own on; the client's own is kept end to end."""
    before = len(proxied.nginx.accesses())  # the readiness probes' lines
    with proxied.client() as client:
        answered = client.get(f"{proxied.nginx.base_url}/healthz")
        mine = client.get(f"{proxied.nginx.base_url}/readyz", headers={"X-Request-Id": "job-42"})
    assert answered.status_code == mine.status_code == 200
    accesses = {access.uri: access for access in proxied.nginx.accesses_after(before, 2)}
    nginx_made = accesses["/healthz"].request_id
    assert re.fullmatch(r"[0-9a-f]{32}", nginx_made), nginx_made
    assert answered.headers["X-Request-Id"] == nginx_made  # the server took nginx's id
    assert (accesses["/readyz"].request_id, mine.headers["X-Request-Id"]) == ("job-42", "job-42")
    log = proxied.server.log_text()
    assert f"request_id={nginx_made}" in log
    assert "request_id=job-42" in log
