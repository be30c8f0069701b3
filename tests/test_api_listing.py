"""``GET /api/uploads``: owner-scoped listing with filters and cursor pagination, on SQLite and
PostgreSQL, over HTTP on a per-test app."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.conftest import TUS, make_settings
from tests.tus_http_helpers import create, serve
from upload_service.auth.apikey import hash_key

pytestmark = pytest.mark.anyio

ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdef"
SIGNING_KEY = "a-signing-key-for-download-urls-32+"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def upload_as(client: httpx.AsyncClient, key: str, body: bytes | None = None) -> str:
    headers = {**TUS, **bearer(key), "Upload-Length": str(len(body) if body else 10)}
    if body is not None:
        headers["Content-Type"] = "application/offset+octet-stream"
    response = await client.post("/files/", headers=headers, content=body)
    assert response.status_code == 201, response.text
    return str(response.headers["Location"]).rsplit("/", 1)[1]


async def every_page(client: httpx.AsyncClient, params: dict[str, str], key: str) -> list[str]:
    ids: list[str] = []
    cursor: str | None = None
    while True:
        query = dict(params) | ({"cursor": cursor} if cursor else {})
        response = await client.get("/api/uploads", params=query, headers=bearer(key))
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["uploads"]) <= int(params.get("limit", 50))
        ids += [upload["id"] for upload in page["uploads"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids


async def test_each_owner_lists_only_their_own_uploads_a_page_at_a_time(
    data_dir: Path, database_url: str
) -> None:
    settings = make_settings(
        data_dir,
        database_url,
        auth_api_keys=f"alice:{hash_key(ALICE)},bob:{hash_key(BOB)}",
        auth_signing_key=SIGNING_KEY,
    )
    async with serve(settings) as served:
        client = served.client
        alices = [await upload_as(client, ALICE) for _ in range(5)]
        bobs = [await upload_as(client, BOB) for _ in range(2)]
        ready = await upload_as(client, ALICE, b"abc")

        listed = await every_page(client, {"limit": "2"}, ALICE)
        assert listed == [ready, *reversed(alices)]  # newest first, nothing twice, none missing
        assert await every_page(client, {}, BOB) == list(reversed(bobs))

        response = await client.get(
            "/api/uploads", params={"state": "ready"}, headers=bearer(ALICE)
        )
        page = response.json()
        assert [upload["id"] for upload in page["uploads"]] == [ready]
        assert page["next_cursor"] is None
        item = page["uploads"][0]
        assert item["owner"] == "key:alice"
        assert "signature=" in item["download_url"]  # the same signed URL as GET /api/uploads/{id}
        assert item["video"] is None
        both = await every_page(client, {"state": "ready", "limit": "1"}, BOB)
        assert both == []

        # no token: 401, as on every route
        assert (await client.get("/api/uploads")).status_code == 401


async def test_open_mode_lists_everyone_and_filters_by_creation_time(
    client: httpx.AsyncClient,
) -> None:
    first = await create(client, 10)
    middle = datetime.now(UTC)
    second = await create(client, 10)
    third = await create(client, 3, body=b"abc")

    async def ids(**params: str) -> list[str]:
        response = await client.get("/api/uploads", params=params)
        assert response.status_code == 200, response.text
        return [upload["id"] for upload in response.json()["uploads"]]

    assert await ids() == [third, second, first]
    assert await ids(created_after=middle.isoformat()) == [third, second]
    assert await ids(created_before=middle.isoformat()) == [first]
    naive = middle.replace(tzinfo=None).isoformat()  # no offset: UTC
    assert await ids(created_before=naive) == [first]
    later = (middle + timedelta(hours=1)).isoformat()
    assert await ids(created_after=later) == []
    assert await ids(state="receiving") == [second, first]
    response = await client.get("/api/uploads?state=ready&state=receiving")
    assert [upload["id"] for upload in response.json()["uploads"]] == [third, second, first]


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("limit=0", "limit: "),
        ("limit=501", "limit: "),
        ("limit=many", "limit: "),
        ("state=asleep", "state: "),
        ("created_after=yesterday", "created_after: "),
        ("cursor=bm9wZQ", "cursor is not one this service handed out"),
        ("cursor=%25%25", "cursor is not one this service handed out"),
    ],
)
async def test_bad_parameters_are_a_400_with_a_one_line_reason(
    client: httpx.AsyncClient, query: str, reason: str
) -> None:
    response = await client.get(f"/api/uploads?{query}")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "bad_request"
    assert error["message"].startswith(reason)
    assert "\n" not in error["message"]
