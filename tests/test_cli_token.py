"""``upload-service token``: a development JWT the service's own authenticator accepts."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest

from upload_service.auth.apikey import hash_key
from upload_service.auth.owners import jwt_owner
from upload_service.auth.setup import open_auth
from upload_service.cli import main
from upload_service.errors import Unauthorized
from upload_service.settings import load_settings

SECRET = "s" * 48


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("UPLOAD_DATA_DIR", str(tmp_path / "data"))
    return monkeypatch


def token(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["token", *args])
    out, err = capsys.readouterr()
    return status, out, err


async def test_the_token_is_accepted_by_the_service(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("UPLOAD_AUTH_JWT_SECRET", SECRET)
    status, out, err = token(capsys, "--sub", "alice")
    assert status == 0, err
    assert out.count("\n") == 1  # only the token
    async with open_auth(load_settings()) as auth:
        principal = await auth.principal(f"Bearer {out.strip()}")
    assert principal.owner == jwt_owner(None, "alice")
    claims = jwt.decode(out.strip(), SECRET, algorithms=["HS256"])
    assert claims["exp"] - time.time() == pytest.approx(3600, abs=5)


async def test_issuer_audience_and_ttl_come_along(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("UPLOAD_AUTH_JWT_SECRET", SECRET)
    env.setenv("UPLOAD_AUTH_JWT_ISSUER", "https://idp.example/")
    env.setenv("UPLOAD_AUTH_JWT_AUDIENCE", "uploads")
    status, out, err = token(capsys, "--sub", "bob", "--ttl", "60")
    assert status == 0, err
    async with open_auth(load_settings()) as auth:
        principal = await auth.principal(f"Bearer {out.strip()}")
    assert principal.owner == jwt_owner("https://idp.example/", "bob")
    claims = jwt.decode(out.strip(), options={"verify_signature": False})
    assert claims["iss"] == "https://idp.example/"
    assert claims["aud"] == "uploads"
    assert claims["exp"] - claims["iat"] == 60
    env.setenv("UPLOAD_AUTH_JWT_AUDIENCE", "other")  # a service of another audience refuses it
    async with open_auth(load_settings()) as auth:
        with pytest.raises(Unauthorized, match="another audience"):
            await auth.principal(f"Bearer {out.strip()}")


def test_without_a_secret_it_cannot_sign(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    status, out, err = token(capsys, "--sub", "alice")
    assert (status, out) == (2, "")
    assert err.startswith("upload-service: no UPLOAD_AUTH_JWT_SECRET is configured")
    assert err.count("\n") == 1
    env.setenv("UPLOAD_AUTH_JWKS_URL", "https://idp.example/jwks.json")
    env.setenv("UPLOAD_AUTH_SIGNING_KEY", "k" * 40)
    status, out, err = token(capsys, "--sub", "alice")
    assert (status, out) == (2, "")
    assert "only a shared secret can sign" in err


def test_jwts_turned_off_and_bad_arguments(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("UPLOAD_AUTH_JWT_SECRET", SECRET)
    env.setenv("UPLOAD_AUTH", "api-key")
    env.setenv("UPLOAD_AUTH_API_KEYS", f"cli:{hash_key('k' * 40)}")
    status, out, err = token(capsys, "--sub", "alice")
    assert (status, out) == (2, "")
    assert "UPLOAD_AUTH=api-key: this service does not take JWTs" in err
    env.delenv("UPLOAD_AUTH")
    status, out, err = token(capsys, "--sub", "")
    assert (status, out) == (2, "")
    assert "--sub must be 1 to 255 characters" in err
    for bad in (["--sub", "a", "--ttl", "0"], ["--sub", "a", "--ttl", "-5"], []):
        with pytest.raises(SystemExit) as usage:
            main(["token", *bad])
        assert usage.value.code == 2
