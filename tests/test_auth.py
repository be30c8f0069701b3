"""Authentication, ownership, quotas and signed download URLs, over HTTP on an app on SQLite.

Every route refuses every kind of bad credential (401) and another owner's token (404, as for an
unknown id) without changing anything stored; valid HS256 tokens, RS256 through a key file, ES256
through a JWKS served by a real HTTP server on 127.0.0.1 (with a key rotation), API keys, the
claims' caps, quotas and signed download links work; the service refuses to run open on a public
address and warns whenever it runs open.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.conftest import TUS, make_settings
from tests.tus_http_helpers import OFFSET_CT, Served, count_uploads, serve, snapshot, stored_files
from upload_service.auth.apikey import hash_key
from upload_service.auth.signed import UrlSigner
from upload_service.cli import main
from upload_service.settings import ConfigError, Settings

pytestmark = pytest.mark.anyio

SECRET = "an-hs256-secret-of-at-least-32-bytes!"
AUDIENCE = "uploads"
ISSUER = "https://issuer.test"
API_KEY = "service-key-0123456789"
SIGNING_KEY = "a-signing-key-for-download-urls-32+"


@pytest.fixture
def sqlite_url(template_db: Path, tmp_path: Path) -> str:
    path = tmp_path / "data" / "uploads.db"
    path.parent.mkdir(exist_ok=True)
    shutil.copyfile(template_db, path)
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture
def data_dir(tmp_path: Path, sqlite_url: str) -> Path:
    return tmp_path / "data"


def auth_settings(data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "auth_jwt_secret": SECRET,
        "auth_jwt_audience": AUDIENCE,
        "auth_jwt_issuer": ISSUER,
        "auth_api_keys": f"svc:{hash_key(API_KEY)}",
    }
    values.update(overrides)
    return make_settings(data_dir, None, **values)


def claims(sub: str = "alice", **extra: object) -> dict[str, object]:
    values: dict[str, object] = {
        "sub": sub,
        "aud": AUDIENCE,
        "iss": ISSUER,
        "exp": int(time.time()) + 600,
    }
    values.update(extra)
    return values


def hs256(sub: str = "alice", *, secret: str = SECRET, **extra: object) -> str:
    return jwt.encode(claims(sub, **extra), secret, algorithm="HS256")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, object], payload: dict[str, object], key: bytes | None) -> str:
    """A token PyJWT would refuse to make: ``alg: none``, or HS256 keyed with a public key."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    if key is None:
        return signing_input + "."
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Uploads:
    receiving: str  # 10 bytes long, "abc" received
    ready: str  # "0123456789", ready


async def make_uploads(client: httpx.AsyncClient, token: str) -> Uploads:
    auth = bearer(token)
    created = await client.post("/files/", headers={**TUS, **auth, "Upload-Length": "10"})
    assert created.status_code == 201, created.text
    receiving = created.headers["Location"].rsplit("/", 1)[1]
    patched = await client.patch(
        f"/files/{receiving}",
        headers={**TUS, **auth, "Upload-Offset": "0", "Content-Type": OFFSET_CT},
        content=b"abc",
    )
    assert patched.status_code == 204, patched.text
    done = await client.post(
        "/files/",
        headers={**TUS, **auth, "Upload-Length": "10", "Content-Type": OFFSET_CT},
        content=b"0123456789",
    )
    assert done.status_code == 201, done.text
    ready = done.headers["Location"].rsplit("/", 1)[1]
    status = await client.get(f"/api/uploads/{ready}", headers=auth)
    assert status.json()["state"] == "ready"
    return Uploads(receiving, ready)


async def everything_stored(served: Served, uploads: Uploads) -> tuple[object, ...]:
    services = served.services
    return (
        await count_uploads(services),
        await stored_files(services),
        await snapshot(services, uploads.receiving),
        await snapshot(services, uploads.ready),
    )


def route_requests(uploads: Uploads) -> dict[str, tuple[str, str, dict[str, str], bytes]]:
    """Each route: method, path, headers and body of a request that would succeed for alice."""
    patch_headers = {**TUS, "Upload-Offset": "3", "Content-Type": OFFSET_CT}
    return {
        "POST create": ("POST", "/files/", {**TUS, "Upload-Length": "5"}, b""),
        "HEAD": ("HEAD", f"/files/{uploads.receiving}", dict(TUS), b""),
        "PATCH": ("PATCH", f"/files/{uploads.receiving}", patch_headers, b"def"),
        "DELETE": ("DELETE", f"/files/{uploads.receiving}", dict(TUS), b""),
        "GET download": ("GET", f"/files/{uploads.ready}", {}, b""),
        "GET api": ("GET", f"/api/uploads/{uploads.receiving}", {}, b""),
        "GET deliveries": ("GET", f"/api/uploads/{uploads.receiving}/deliveries", {}, b""),
    }


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[Served]:
    async with serve(settings) as result:
        yield result


async def test_every_route_refuses_bad_credentials_and_other_owners_changing_nothing(
    data_dir: Path,
) -> None:
    async with served(auth_settings(data_dir)) as app:
        client = app.client
        uploads = await make_uploads(client, hs256("alice"))
        before = await everything_stored(app, uploads)
        bad = {
            "no token": ({}, "missing bearer token"),
            "expired": (bearer(hs256(exp=int(time.time()) - 60)), "token has expired"),
            "bad signature": (
                bearer(hs256(secret="another-secret-of-at-least-32-bytes!!")),
                "bad token signature",
            ),
            "alg none": (
                bearer(forged({"alg": "none", "typ": "JWT"}, claims(), None)),
                "token algorithm 'none' is not accepted",
            ),
            "other audience": (bearer(hs256(aud="elsewhere")), "token is for another audience"),
            "other issuer": (bearer(hs256(iss="https://evil.test")), "another issuer"),
            "unknown API key": (bearer("not-a-key-anyone-has"), "not a valid JWT or a known"),
            "other scheme": ({"Authorization": "Basic YWxpY2U6cHc="}, "use Bearer"),
        }
        for route, (method, path, headers, body) in route_requests(uploads).items():
            for name, (credentials, message) in bad.items():
                response = await client.request(
                    method, path, headers={**headers, **credentials}, content=body
                )
                assert response.status_code == 401, (route, name, response.text)
                challenge = response.headers["WWW-Authenticate"]
                assert challenge.startswith('Bearer realm="upload_service"'), (route, name)
                if name == "no token":
                    assert "error=" not in challenge
                else:
                    assert 'error="invalid_token"' in challenge, (route, name)
                if method != "HEAD":
                    assert message in response.text, (route, name, response.text)
            if route == "POST create":
                continue  # another owner creates an upload of their own: no refusal
            response = await client.request(
                method, path, headers={**headers, **bearer(hs256("mallory"))}, content=body
            )
            assert response.status_code == 404, (route, response.text)
            unknown = path.replace(uploads.receiving, "f" * 32).replace(uploads.ready, "f" * 32)
            same = await client.request(
                method, unknown, headers={**headers, **bearer(hs256("alice"))}, content=body
            )
            assert same.status_code == 404
            if method != "HEAD":  # indistinguishable from an upload that does not exist
                assert response.text == same.text
            assert await everything_stored(app, uploads) == before, route

        # a final concatenation may only name the caller's own parts
        part = await client.post(
            "/files/",
            headers={
                **TUS,
                **bearer(hs256("alice")),
                "Upload-Length": "2",
                "Upload-Concat": "partial",
            },
        )
        part_path = urlsplit(part.headers["Location"]).path
        final = await client.post(
            "/files/",
            headers={**TUS, **bearer(hs256("mallory")), "Upload-Concat": f"final;{part_path}"},
        )
        assert final.status_code == 400
        assert "does not exist" in final.text or "no such" in final.text, final.text


async def test_valid_tokens_and_api_keys_own_their_uploads(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["hash-key", "svc2"]) == 0
    printed = capsys.readouterr().out
    entry = printed.split("entry: ", 1)[1].split()[0]
    key = printed.rsplit(": ", 1)[1].strip()
    assert entry == f"svc2:{hash_key(key)}"
    assert main(["hash-key", "svc3", "--key", "given"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"svc3:{hash_key('given')}")
    keys = f"svc:{hash_key(API_KEY)},{entry}"
    async with served(auth_settings(data_dir, auth_api_keys=keys)) as app:
        client = app.client
        uploads = await make_uploads(client, hs256("alice"))
        record = await app.services.repository.get(uploads.receiving)
        assert record is not None
        assert record.owner == "jwt:https%3A//issuer.test:alice"
        mine = await client.get(f"/api/uploads/{uploads.receiving}", headers=bearer(hs256()))
        assert mine.json()["owner"] == "jwt:https%3A//issuer.test:alice"
        by_key = await make_uploads(client, API_KEY)
        assert (await client.get(f"/files/{by_key.ready}", headers=bearer(API_KEY))).content == (
            b"0123456789"
        )
        stored = await app.services.repository.get(by_key.ready)
        assert stored is not None
        assert stored.owner == "key:svc"
        other_key = await client.head(f"/files/{by_key.receiving}", headers={**TUS, **bearer(key)})
        assert other_key.status_code == 404  # svc2's key does not reach svc's uploads
        assert (
            await client.head(f"/files/{uploads.receiving}", headers={**TUS, **bearer(key)})
        ).status_code == 404
        # anonymous endpoints
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await client.get(path)).status_code == 200, path
        options = await client.options("/files/", headers=TUS)
        assert options.status_code == 204
        preflight = await client.options(
            f"/files/{uploads.receiving}",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "PATCH",
                "Access-Control-Request-Headers": "authorization,upload-offset,tus-resumable",
            },
        )
        assert preflight.status_code == 200
        assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()
        denied = await client.get(
            f"/api/uploads/{uploads.receiving}", headers={"Origin": "https://app.example"}
        )
        assert "WWW-Authenticate" in denied.headers["Access-Control-Expose-Headers"]
        assert denied.json()["error"]["code"] == "unauthorized"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


async def test_rs256_through_a_key_file_refuses_the_public_key_as_an_hs256_secret(
    data_dir: Path, tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    pem = tmp_path / "public.pem"
    pem.write_bytes(public_pem(rsa_key))
    settings = auth_settings(
        data_dir,
        auth_jwt_secret=None,
        auth_jwt_public_key_file=pem,
        auth_signing_key=SIGNING_KEY,
    )
    async with served(settings) as app:
        good = jwt.encode(claims(), rsa_key, algorithm="RS256")
        created = await app.client.post(
            "/files/", headers={**TUS, **bearer(good), "Upload-Length": "3"}
        )
        assert created.status_code == 201, created.text
        confused = forged({"alg": "HS256", "typ": "JWT"}, claims(), public_pem(rsa_key))
        refused = await app.client.post(
            "/files/", headers={**TUS, **bearer(confused), "Upload-Length": "3"}
        )
        assert refused.status_code == 401
        assert "token algorithm 'HS256' is not accepted" in refused.text
        assert await count_uploads(app.services) == 1


class JwksServer:
    """A JWKS document served over real HTTP on 127.0.0.1, swappable, counting its fetches."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps(outer.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"

    def publish(self, *keys: tuple[str, ec.EllipticCurvePrivateKey]) -> None:
        entries = []
        for kid, key in keys:
            entry = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
            entries.append({**entry, "kid": kid, "alg": "ES256", "use": "sig"})
        self.document = {"keys": entries}


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    server = JwksServer()
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()
        thread.join()


async def test_es256_through_a_jwks_with_key_rotation(data_dir: Path, jwks: JwksServer) -> None:
    first = ec.generate_private_key(ec.SECP256R1())
    second = ec.generate_private_key(ec.SECP256R1())
    jwks.publish(("k1", first))
    settings = auth_settings(
        data_dir,
        auth_jwt_secret=None,
        auth_jwks_url=jwks.url,
        auth_jwks_refetch_interval=0.3,
        auth_signing_key=SIGNING_KEY,
    )

    def es256(kid: str, key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
        return bearer(jwt.encode(claims(), key, algorithm="ES256", headers={"kid": kid}))

    async def create(credentials: dict[str, str]) -> httpx.Response:
        return await app.client.post(
            "/files/", headers={**TUS, **credentials, "Upload-Length": "1"}
        )

    async with served(settings) as app:
        assert jwks.fetches == 0  # fetched when a token first needs it
        assert (await create(es256("k1", first))).status_code == 201
        assert (await create(es256("k1", first))).status_code == 201
        assert jwks.fetches == 1  # cached
        jwks.publish(("k2", second))  # the issuer rotates its key
        time.sleep(0.35)  # noqa: ASYNC251 - past the refetch interval (nothing else runs)
        assert (await create(es256("k2", second))).status_code == 201
        assert jwks.fetches == 2  # the unknown kid made it fetch once
        for kid in ("made-up-1", "made-up-2", "k1"):  # rate-limited: no fetch for each of them
            refused = await create(es256(kid, second if kid != "k1" else first))
            assert refused.status_code == 401
            assert "unknown signing key" in refused.text
        assert jwks.fetches == 2
        wrong = await create(es256("k2", first))  # the kid of one key, signed by another
        assert wrong.status_code == 401
        assert "bad token signature" in wrong.text
        assert await count_uploads(app.services) == 3


async def test_a_tokens_claims_cap_its_uploads(data_dir: Path) -> None:
    settings = auth_settings(data_dir, max_size=8, allowed_types="video/*,image/*")
    mp4 = base64.b64encode(b"video/mp4").decode()
    png = base64.b64encode(b"image/png").decode()
    async with served(settings) as app:
        client = app.client

        async def create(token: str, **headers: str) -> httpx.Response:
            extra = {name.replace("_", "-"): value for name, value in headers.items()}
            return await client.post("/files/", headers={**TUS, **bearer(token), **extra})

        capped = hs256(upload_max_size=5)
        assert (await create(capped, Upload_Length="6")).status_code == 413
        assert (await create(capped, Upload_Length="5")).status_code == 201
        over_cap = await create(hs256(upload_max_size=100), Upload_Length="9")
        assert over_cap.status_code == 413
        assert "maximum size 8" in over_cap.text
        deferred = await create(capped, Upload_Defer_Length="1")
        upload_id = deferred.headers["Location"].rsplit("/", 1)[1]
        declared = await declare_length(client, upload_id, capped, 6)
        assert declared.status_code == 413
        typed = hs256(upload_types=["image/png"])
        refused = await create(typed, Upload_Length="5", Upload_Metadata=f"filetype {mp4}")
        assert refused.status_code == 415
        assert (
            await create(typed, Upload_Length="5", Upload_Metadata=f"filetype {png}")
        ).status_code == 201
        # both rules must allow: the token's audio/* meets the service's video/*,image/*
        audio = hs256(upload_types="audio/*")
        ogg = base64.b64encode(b"audio/ogg").decode()
        assert (
            await create(audio, Upload_Length="5", Upload_Metadata=f"filetype {ogg}")
        ).status_code == 415
        assert (
            await create(audio, Upload_Length="5", Upload_Metadata=f"filetype {mp4}")
        ).status_code == 415
        bad_claim = await create(hs256(upload_max_size="lots"), Upload_Length="5")
        assert bad_claim.status_code == 401
        assert "upload_max_size" in bad_claim.text


async def declare_length(
    client: httpx.AsyncClient, upload_id: str, token: str, length: int
) -> httpx.Response:
    """An empty PATCH at offset 0 that declares a deferred upload's length."""
    headers = {
        **TUS,
        **bearer(token),
        "Upload-Offset": "0",
        "Content-Type": OFFSET_CT,
        "Upload-Length": str(length),
    }
    return await client.patch(f"/files/{upload_id}", headers=headers)


async def test_quotas_per_owner(data_dir: Path) -> None:
    settings = auth_settings(data_dir, quota_uploads=2, quota_bytes=20)
    async with served(settings) as app:
        client = app.client

        async def create(sub: str, length: str | None) -> httpx.Response:
            sizing = {"Upload-Length": length} if length else {"Upload-Defer-Length": "1"}
            return await client.post("/files/", headers={**TUS, **bearer(hs256(sub)), **sizing})

        assert (await create("alice", "15")).status_code == 201
        too_big = await create("alice", "6")
        assert too_big.status_code == 403
        assert "quota exceeded" in too_big.text
        deferred = await create("alice", None)
        assert deferred.status_code == 201
        third = await create("alice", "1")
        assert third.status_code == 403
        assert "unfinished uploads" in third.text
        assert (await create("bob", "20")).status_code == 201  # per owner
        upload_id = deferred.headers["Location"].rsplit("/", 1)[1]
        declare = await declare_length(client, upload_id, hs256("alice"), 6)
        assert declare.status_code == 403
        assert await count_uploads(app.services) == 3
        assert len(await stored_files(app.services)) == 3  # a refused creation leaves no file


def signed_query(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}


async def test_signed_download_urls(data_dir: Path) -> None:
    async with served(auth_settings(data_dir, signed_url_ttl=60)) as app:
        client = app.client
        uploads = await make_uploads(client, hs256())
        other = await make_uploads(client, hs256())
        status = await client.get(f"/api/uploads/{uploads.ready}", headers=bearer(hs256()))
        url = status.json()["download_url"]
        assert url.startswith(f"http://testserver/files/{uploads.ready}?expires=")
        receiving = await client.get(f"/api/uploads/{uploads.receiving}", headers=bearer(hs256()))
        assert receiving.json()["download_url"] is None

        whole = await client.get(url)  # no token
        assert whole.status_code == 200
        assert whole.content == b"0123456789"
        part = await client.get(url, headers={"Range": "bytes=2-4"})
        assert part.status_code == 206
        assert part.content == b"234"
        query = signed_query(url)
        before = await everything_stored(app, uploads)

        tampered = dict(
            query, signature=("0" if query["signature"][0] != "0" else "1") + query["signature"][1:]
        )
        later = dict(query, expires=str(int(query["expires"]) + 1000))
        key = SECRET.encode()
        from upload_service.auth.signed import derived_key

        past = UrlSigner(derived_key(key), 60, clock=lambda: time.time() - 3600)
        expired = signed_query("?" + past.query(uploads.ready))
        cases = {
            "tampered": (uploads.ready, tampered, "signature"),
            "extended": (uploads.ready, later, "signature"),
            "expired": (uploads.ready, expired, "expired"),
            "other upload": (other.ready, query, "signature"),
            "expires only": (uploads.ready, {"expires": query["expires"]}, "required"),
        }
        for name, (target, params, message) in cases.items():
            refused = await client.get(f"/files/{target}", params=params)
            assert refused.status_code == 403, (name, refused.text)
            assert message in refused.text, (name, refused.text)
            # a token beside a bad signature does not rescue it: no fallback
            with_token = await client.get(
                f"/files/{target}", params=params, headers=bearer(hs256())
            )
            assert with_token.status_code == 403, name
        # the signature grants a GET only
        patch_headers = {**TUS, "Upload-Offset": "10", "Content-Type": OFFSET_CT}
        for method, headers, body in (
            ("PATCH", patch_headers, b"x"),
            ("HEAD", dict(TUS), b""),
            ("DELETE", dict(TUS), b""),
        ):
            refused = await client.request(
                method, f"/files/{uploads.ready}", params=query, headers=headers, content=body
            )
            assert refused.status_code == 401, method
        api = await client.get(f"/api/uploads/{uploads.ready}", params=query)
        assert api.status_code == 401
        assert await everything_stored(app, uploads) == before


async def test_refuses_to_run_open_on_a_public_address_and_warns_when_open(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(
        ConfigError, match=r"refusing to run without authentication on '0\.0\.0\.0'"
    ):
        async with served(make_settings(data_dir, host="0.0.0.0")):
            pass
    with caplog.at_level(logging.WARNING, logger="upload_service"):
        async with served(make_settings(data_dir, host="0.0.0.0", auth="none")) as app:
            created = await app.client.post("/files/", headers={**TUS, "Upload-Length": "1"})
            assert created.status_code == 201
    assert "authentication is off" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="upload_service"):
        async with served(make_settings(data_dir)) as app:  # loopback: open, and says so
            assert (await app.client.head("/files/" + "f" * 32, headers=TUS)).status_code == 404
    assert "authentication is off" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="upload_service"):
        async with served(auth_settings(data_dir, host="0.0.0.0")):
            pass
    assert "authentication is off" not in caplog.text


def test_serve_refuses_to_start_open_on_a_public_address(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("UPLOAD_DATA_DIR", str(clean_env / "data"))
    monkeypatch.setenv("UPLOAD_HOST", "127.0.0.1")  # restored after: serve --host rewrites it
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    error = capsys.readouterr().err
    assert "refusing to run without authentication on '0.0.0.0'" in error
    assert "UPLOAD_AUTH=none" in error
    assert not (clean_env / "data").exists()  # refused before touching anything


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"UPLOAD_AUTH_JWT_SECRET": "short"},
            "UPLOAD_AUTH_JWT_SECRET: Value error, must be at least 32",
        ),
        ({"UPLOAD_AUTH_API_KEYS": "svc:plaintext-key"}, "UPLOAD_AUTH_API_KEYS"),
        ({"UPLOAD_AUTH": "jwt"}, "UPLOAD_AUTH=jwt needs"),
        ({"UPLOAD_AUTH": "none", "UPLOAD_AUTH_JWT_SECRET": SECRET}, "UPLOAD_AUTH=none runs open"),
        ({"UPLOAD_AUTH_JWKS_URL": "http://idp.example/jwks"}, "UPLOAD_AUTH_JWKS_URL"),
        ({"UPLOAD_AUTH_JWT_ALGORITHMS": "none"}, "UPLOAD_AUTH_JWT_ALGORITHMS"),
        (
            {"UPLOAD_AUTH_API_KEYS": f"svc:{hash_key('k')}"},
            "set UPLOAD_AUTH_SIGNING_KEY",
        ),
    ],
)
def test_bad_auth_settings_stop_start_up_naming_the_variable(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    from upload_service.settings import load_settings

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert message in str(raised.value)
