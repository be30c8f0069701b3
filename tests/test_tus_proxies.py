"""The service behind proxies: Location from trusted proxy headers, UPLOAD_RELATIVE_LOCATION, and
the tus endpoint at another UPLOAD_BASE_PATH, over HTTP (httpx on the ASGI app)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import TUS, make_settings
from tests.tus_http_helpers import OFFSET_CT, reason
from upload_service.app import create_app
from upload_service.settings import ConfigError, Settings, load_settings

PROXY = ("10.0.0.1", 4000)
BEHIND_TLS = {
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "uploads.example.com",
    "X-Forwarded-For": "203.0.113.7",
}


@asynccontextmanager
async def serve_from(
    settings: Settings, peer: tuple[str, int] = PROXY
) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan, and a client whose requests arrive from ``peer``."""
    application = create_app(settings, settle_heap=False)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, client=peer)
        async with httpx.AsyncClient(transport=transport, base_url="http://backend:8080") as http:
            yield http


def settings_of(data_dir: Path, database_url: str, **overrides: object) -> Settings:
    return make_settings(data_dir, database_url, trusted_proxies=("10.0.0.0/8",), **overrides)


async def post(client: httpx.AsyncClient, path: str = "/files/", **headers: str) -> httpx.Response:
    response = await client.post(path, headers={**TUS, "Upload-Length": "3", **headers})
    assert response.status_code == 201, response.text
    return response


async def test_location_behind_a_trusted_tls_proxy(data_dir: Path, database_url: str) -> None:
    async with serve_from(settings_of(data_dir, database_url)) as client:
        location = (await post(client, **BEHIND_TLS)).headers["Location"]
        assert location.startswith("https://uploads.example.com/files/")
        assert len(location.removeprefix("https://uploads.example.com/files/")) == 32


async def test_location_ignores_proxy_headers_from_an_untrusted_peer(
    data_dir: Path, database_url: str
) -> None:
    settings = settings_of(data_dir, database_url)
    async with serve_from(settings, peer=("192.0.2.50", 1)) as client:
        spoofed = {**BEHIND_TLS, "X-Forwarded-Host": "evil.example", "X-Forwarded-Prefix": "/x"}
        location = (await post(client, **spoofed)).headers["Location"]
        assert location.startswith("http://backend:8080/files/")


async def test_the_default_trusts_loopback_only(data_dir: Path, database_url: str) -> None:
    settings = make_settings(data_dir, database_url)
    assert settings.server.trusted_proxies == ("127.0.0.1/32", "::1/128")
    async with serve_from(settings, peer=("127.0.0.1", 5)) as client:
        location = (await post(client, **BEHIND_TLS)).headers["Location"]
        assert location.startswith("https://uploads.example.com/files/")
    async with serve_from(settings, peer=("10.0.0.1", 5)) as client:
        location = (await post(client, **BEHIND_TLS)).headers["Location"]
        assert location.startswith("http://backend:8080/files/")


async def test_forwarded_header_with_a_prefix_gives_the_whole_public_url(
    data_dir: Path, database_url: str
) -> None:
    async with serve_from(settings_of(data_dir, database_url)) as client:
        response = await post(
            client,
            Forwarded='for="[2001:db8::7]:5000";proto=https;host="uploads.example:8443"',
            **{"X-Forwarded-Prefix": "/media"},
        )
        location = response.headers["Location"]
        assert location.startswith("https://uploads.example:8443/media/files/")
        # The proxy stripped /media: requests arrive at /files/<id>, and the app serves them.
        upload_id = location.rsplit("/", 1)[1]
        head = await client.head(f"/files/{upload_id}", headers=TUS)
        assert head.status_code == 200
        assert head.headers["Tus-Resumable"] == "1.0.0"


async def test_relative_location(data_dir: Path, database_url: str) -> None:
    settings = settings_of(data_dir, database_url, relative_location=True)
    async with serve_from(settings) as client:
        location = (await post(client, **{"X-Forwarded-Prefix": "/media"})).headers["Location"]
        assert location.startswith("/media/files/")
        upload_id = location.removeprefix("/media/files/")
        patched = await client.patch(
            f"/files/{upload_id}",
            headers={**TUS, "Upload-Offset": "0", "Content-Type": OFFSET_CT},
            content=b"abc",
        )
        assert patched.status_code == 204


@pytest.mark.parametrize("relative", [False, True])
async def test_final_upload_takes_absolute_urls_of_this_service_behind_the_proxy(
    data_dir: Path, database_url: str, relative: bool
) -> None:
    settings = settings_of(data_dir, database_url, relative_location=relative)
    async with serve_from(settings) as client:
        proxied = {**BEHIND_TLS, "X-Forwarded-Prefix": "/media"}
        parts = [
            (await post(client, **{"Upload-Concat": "partial"}, **proxied)).headers["Location"]
            for _ in range(3)
        ]
        ids = [part.rsplit("/", 1)[1] for part in parts]
        urls = [
            f"https://uploads.example.com:443/media/files/{ids[0]}",  # the default port spelled
            f"HTTPS://Uploads.Example.com/media/files/{ids[1]}/",
            f"/media/files/{ids[2]}",
        ]
        response = await client.post(
            "/files/", headers={**TUS, **proxied, "Upload-Concat": "final;" + " ".join(urls)}
        )
        assert response.status_code == 201, response.text
        prefix = "" if relative else "https://uploads.example.com"
        assert response.headers["Location"].startswith(prefix + "/media/files/")
        final_id = response.headers["Location"].rsplit("/", 1)[1]
        head = await client.head(f"/files/{final_id}", headers={**TUS, **proxied})
        assert head.headers["Upload-Concat"] == "final;" + " ".join(
            f"/media/files/{part}" for part in ids
        )


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/files/{id}",
        "http://uploads.example.com/files/{id}",  # the wrong scheme
        "https://uploads.example.com:8443/files/{id}",
        "https://uploads.example.com/other/files/{id}",
    ],
)
async def test_final_upload_refuses_urls_of_another_server(
    data_dir: Path, database_url: str, url: str
) -> None:
    async with serve_from(settings_of(data_dir, database_url)) as client:
        part = (await post(client, **{"Upload-Concat": "partial"})).headers["Location"]
        named = url.format(id=part.rsplit("/", 1)[1])
        response = await client.post(
            "/files/", headers={**TUS, **BEHIND_TLS, "Upload-Concat": f"final;{named}"}
        )
        assert response.status_code == 400
        assert reason(response).startswith(f"Upload-Concat names {named!r}, which is not an")


# -- another base path ----------------------------------------------------------------------------


async def test_another_base_path_end_to_end(data_dir: Path, database_url: str) -> None:
    settings = settings_of(data_dir, database_url, base_path="/v1/tus")
    async with serve_from(settings) as client:
        options = await client.options("/v1/tus/")
        assert options.status_code == 204
        assert "creation" in options.headers["Tus-Extension"]
        assert (
            await client.post("/files/", headers={**TUS, "Upload-Length": "3"})
        ).status_code == 404

        location = (await post(client, "/v1/tus/")).headers["Location"]
        assert location.startswith("http://backend:8080/v1/tus/")
        upload_id = location.removeprefix("http://backend:8080/v1/tus/")
        patched = await client.patch(
            location,
            headers={**TUS, "Upload-Offset": "0", "Content-Type": OFFSET_CT},
            content=b"abc",
        )
        assert patched.status_code == 204
        assert patched.headers["Upload-Offset"] == "3"
        head = await client.head(location, headers=TUS)
        assert head.headers["Upload-Offset"] == "3"
        assert head.headers["Tus-Resumable"] == "1.0.0"

        # Errors under the base path are tus errors: one line of text, Tus-Resumable, Allow.
        wrong = await client.patch(location, headers={**TUS, "Upload-Offset": "1"})
        assert wrong.status_code == 415
        assert wrong.headers["Tus-Resumable"] == "1.0.0"
        not_allowed = await client.put(location, headers=TUS)
        assert not_allowed.status_code == 405
        assert not_allowed.headers["Allow"] == "OPTIONS, HEAD, PATCH, DELETE, GET"
        assert not_allowed.headers["Tus-Resumable"] == "1.0.0"
        assert (await client.get("/api/uploads/x")).headers["content-type"] == "application/json"

        part_locations = [
            (await post(client, "/v1/tus/", **{"Upload-Concat": "partial"})).headers["Location"]
            for _ in range(2)
        ]
        for part in part_locations:
            done = await client.patch(
                part,
                headers={**TUS, "Upload-Offset": "0", "Content-Type": OFFSET_CT},
                content=b"xyz",
            )
            assert done.status_code == 204
        parts = [part.removeprefix("http://backend:8080") for part in part_locations]
        final = await client.post(
            "/v1/tus/", headers={**TUS, "Upload-Concat": "final;" + " ".join(parts)}
        )
        assert final.status_code == 201, final.text
        final_head = await client.head(final.headers["Location"], headers=TUS)
        assert final_head.headers["Upload-Concat"] == "final;" + " ".join(parts)
        old_style = await client.post(
            "/v1/tus/",
            headers={**TUS, "Upload-Concat": f"final;/files/{parts[0].rsplit('/', 1)[1]}"},
        )
        assert old_style.status_code == 400

        deleted = await client.delete(location, headers=TUS)
        assert deleted.status_code == 204
        assert (await client.head(location, headers=TUS)).status_code == 410
        assert (await client.get(f"/v1/tus/{upload_id}")).status_code == 410


@pytest.mark.parametrize(
    "value",
    ["files", "/files/", "/", "", "/a/../files", "/a//b", "/a b", "/api", "/api/tus", "/readyz"],
)
def test_an_invalid_base_path_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("UPLOAD_BASE_PATH", value)
    with pytest.raises(ConfigError, match="UPLOAD_BASE_PATH"):
        load_settings()


@pytest.mark.parametrize("value", ["10.0.0.300", "example.com", "10.0.0.0/33", "*,nope"])
def test_an_invalid_trusted_proxy_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("UPLOAD_TRUSTED_PROXIES", value)
    with pytest.raises(ConfigError, match="UPLOAD_TRUSTED_PROXIES"):
        load_settings()


def test_trusted_proxies_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("UPLOAD_TRUSTED_PROXIES", " 10.1.2.3, 172.16.0.0/12 ,2001:db8::/32,")
    assert load_settings().server.trusted_proxies == (
        "10.1.2.3/32",
        "172.16.0.0/12",
        "2001:db8::/32",
    )
    monkeypatch.setenv("UPLOAD_TRUSTED_PROXIES", "")
    assert load_settings().server.trusted_proxies == ()
    monkeypatch.setenv("UPLOAD_TRUSTED_PROXIES", "*")
    assert load_settings().server.trusted_proxies == ("*",)
