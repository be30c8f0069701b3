"""HTTP tests: the validators of GET /files/{id} (ETag, Last-Modified) and RFC 9110 conditional
requests (If-None-Match, If-Modified-Since, If-Range)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from sqlalchemy import update

from tests.tus_http_helpers import create, reason
from upload_service.db.models import UploadRow
from upload_service.services import Services

pytestmark = pytest.mark.anyio  # see test_tus_creation.py

DATA = b"0123456789"
ETAG = f'"sha256-{hashlib.sha256(DATA).hexdigest()}"'


def http_date(moment: datetime) -> str:
    return format_datetime(moment.astimezone(UTC), usegmt=True)


async def finished(client: httpx.AsyncClient) -> tuple[str, datetime]:
    """A finished upload of DATA: its id and its completion time, in whole seconds."""
    upload_id = await create(client, len(DATA), body=DATA)
    body = (await client.get(f"/api/uploads/{upload_id}")).json()
    assert body["state"] == "ready"
    completed = datetime.fromisoformat(body["completed_at"])
    return upload_id, completed.replace(microsecond=0)


async def get(client: httpx.AsyncClient, upload_id: str, **headers: str) -> httpx.Response:
    return await client.get(
        f"/files/{upload_id}", headers={k.replace("_", "-"): v for k, v in headers.items()}
    )


def assert_not_modified(response: httpx.Response, etag: str = ETAG) -> None:
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["ETag"] == etag
    assert "Last-Modified" in response.headers
    assert response.headers["Tus-Resumable"] == "1.0.0"
    for name in ("Content-Length", "Content-Type", "Content-Disposition", "Content-Range"):
        assert name not in response.headers


def assert_whole(response: httpx.Response) -> None:
    assert response.status_code == 200
    assert response.content == DATA
    assert response.headers["Content-Length"] == str(len(DATA))
    assert "Content-Range" not in response.headers


# -- validators ---------------------------------------------------------------------------------


async def test_download_carries_a_strong_etag_from_the_sha256_and_last_modified(
    client: httpx.AsyncClient,
) -> None:
    upload_id, completed = await finished(client)
    response = await get(client, upload_id)
    assert_whole(response)
    assert response.headers["ETag"] == ETAG
    assert response.headers["Last-Modified"] == http_date(completed)
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["Cache-Control"] == "private, no-transform"
    ranged = await get(client, upload_id, Range="bytes=1-2")
    assert ranged.status_code == 206
    assert ranged.headers["ETag"] == ETAG  # the ETag of the whole representation
    assert ranged.headers["Last-Modified"] == http_date(completed)


async def test_without_a_sha256_the_etag_comes_from_id_length_and_completion(
    client: httpx.AsyncClient, services: Services
) -> None:
    upload_id, _ = await finished(client)
    async with services.engine.begin() as connection:
        await connection.execute(
            update(UploadRow).where(UploadRow.id == upload_id).values(sha256=None)
        )
    first = await get(client, upload_id)
    etag = first.headers["ETag"]
    assert etag.startswith('"id-')
    assert etag.endswith('"')
    assert (await get(client, upload_id)).headers["ETag"] == etag  # stable
    other_id, _ = await finished(client)
    assert (await get(client, other_id)).headers["ETag"] == ETAG  # same bytes, with a digest
    assert_not_modified(await get(client, upload_id, If_None_Match=etag), etag)


# -- If-None-Match ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        ETAG,
        f"W/{ETAG}",  # weak comparison
        "*",
        f'"other", W/"x", {ETAG}',
        f' , "a,b" ,{ETAG}, ',  # commas inside a tag and empty list elements
    ],
)
async def test_if_none_match_that_matches_is_304(client: httpx.AsyncClient, value: str) -> None:
    upload_id, _ = await finished(client)
    assert_not_modified(await get(client, upload_id, If_None_Match=value))


async def test_if_none_match_given_twice_is_one_list(client: httpx.AsyncClient) -> None:
    upload_id, _ = await finished(client)
    response = await client.get(
        f"/files/{upload_id}", headers=[("If-None-Match", '"other"'), ("If-None-Match", ETAG)]
    )
    assert_not_modified(response)


@pytest.mark.parametrize("value", ['"other"', 'W/"other"', '"sha256-0"', '"a", "b"'])
async def test_if_none_match_that_does_not_match_sends_the_file(
    client: httpx.AsyncClient, value: str
) -> None:
    upload_id, _ = await finished(client)
    response = await get(client, upload_id, If_None_Match=value)
    assert_whole(response)
    assert response.headers["ETag"] == ETAG


@pytest.mark.parametrize(
    "value", ["garbage", ETAG.strip('"'), f"{ETAG} junk", '"unterminated', "*, " + ETAG]
)
async def test_malformed_if_none_match_is_ignored(client: httpx.AsyncClient, value: str) -> None:
    upload_id, _ = await finished(client)
    assert_whole(await get(client, upload_id, If_None_Match=value))


async def test_if_none_match_takes_precedence_over_if_modified_since(
    client: httpx.AsyncClient,
) -> None:
    upload_id, completed = await finished(client)
    later = http_date(completed + timedelta(days=1))
    assert_whole(await get(client, upload_id, If_None_Match='"other"', If_Modified_Since=later))
    earlier = http_date(completed - timedelta(days=1))
    assert_not_modified(await get(client, upload_id, If_None_Match=ETAG, If_Modified_Since=earlier))


async def test_a_malformed_if_none_match_leaves_if_modified_since_in_charge(
    client: httpx.AsyncClient,
) -> None:
    upload_id, completed = await finished(client)
    response = await get(
        client, upload_id, If_None_Match="garbage", If_Modified_Since=http_date(completed)
    )
    assert_not_modified(response)


async def test_not_modified_wins_over_range(client: httpx.AsyncClient) -> None:
    upload_id, _ = await finished(client)
    assert_not_modified(await get(client, upload_id, If_None_Match=ETAG, Range="bytes=0-1"))
    assert_not_modified(await get(client, upload_id, If_None_Match=ETAG, Range="bytes=50-"))


async def test_an_unfinished_upload_stays_409_whatever_the_conditions(
    client: httpx.AsyncClient,
) -> None:
    upload_id = await create(client, 10, body=b"abc")
    response = await get(client, upload_id, If_None_Match="*")
    assert response.status_code == 409
    assert reason(response) == "upload is not finished (3 of 10 bytes)"


# -- If-Modified-Since --------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [timedelta(0), timedelta(seconds=1), timedelta(days=400)])
async def test_if_modified_since_at_or_after_completion_is_304(
    client: httpx.AsyncClient, shift: timedelta
) -> None:
    upload_id, completed = await finished(client)
    response = await get(client, upload_id, If_Modified_Since=http_date(completed + shift))
    assert_not_modified(response)


async def test_if_modified_since_in_the_obsolete_date_forms(client: httpx.AsyncClient) -> None:
    upload_id, completed = await finished(client)
    for form in ("%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"):  # RFC 850, asctime
        value = completed.astimezone(UTC).strftime(form)
        assert_not_modified(await get(client, upload_id, If_Modified_Since=value))


async def test_if_modified_since_before_completion_sends_the_file(
    client: httpx.AsyncClient,
) -> None:
    upload_id, completed = await finished(client)
    earlier = http_date(completed - timedelta(seconds=1))
    assert_whole(await get(client, upload_id, If_Modified_Since=earlier))


@pytest.mark.parametrize(
    "value",
    [
        "garbage",
        "",
        "2999-01-01",
        "Sun, 06 Nov 2999 08:49:37 +0200",
        "Sun, 32 Nov 2999 08:49:37 GMT",
    ],
)
async def test_malformed_if_modified_since_is_ignored(
    client: httpx.AsyncClient, value: str
) -> None:
    upload_id, _ = await finished(client)
    assert_whole(await get(client, upload_id, If_Modified_Since=value))


# -- If-Range -----------------------------------------------------------------------------------


async def test_if_range_with_the_etag_serves_the_range(client: httpx.AsyncClient) -> None:
    upload_id, _ = await finished(client)
    response = await get(client, upload_id, Range="bytes=2-4", If_Range=ETAG)
    assert response.status_code == 206
    assert response.content == DATA[2:5]
    assert response.headers["Content-Range"] == "bytes 2-4/10"


async def test_if_range_with_the_last_modified_date_serves_the_range(
    client: httpx.AsyncClient,
) -> None:
    upload_id, completed = await finished(client)
    response = await get(client, upload_id, Range="bytes=5-", If_Range=http_date(completed))
    assert response.status_code == 206
    assert response.content == DATA[5:]


@pytest.mark.parametrize(
    "value",
    [
        '"other"',
        f"W/{ETAG}",  # If-Range compares strongly: a weak tag never matches
        "garbage",
        ETAG.strip('"'),
        f"{ETAG}, {ETAG}",
    ],
)
async def test_if_range_that_does_not_match_sends_the_whole_file(
    client: httpx.AsyncClient, value: str
) -> None:
    upload_id, _ = await finished(client)
    response = await get(client, upload_id, Range="bytes=2-4", If_Range=value)
    assert_whole(response)
    assert response.headers["ETag"] == ETAG


@pytest.mark.parametrize("shift", [timedelta(seconds=1), timedelta(seconds=-1)])
async def test_if_range_with_another_date_sends_the_whole_file(
    client: httpx.AsyncClient, shift: timedelta
) -> None:
    upload_id, completed = await finished(client)
    response = await get(
        client, upload_id, Range="bytes=2-4", If_Range=http_date(completed + shift)
    )
    assert_whole(response)


async def test_if_range_without_range_is_ignored(client: httpx.AsyncClient) -> None:
    upload_id, _ = await finished(client)
    assert_whole(await get(client, upload_id, If_Range='"other"'))
    assert_whole(await get(client, upload_id, If_Range=ETAG))


async def test_if_range_decides_whether_an_unsatisfiable_range_is_416(
    client: httpx.AsyncClient,
) -> None:
    upload_id, _ = await finished(client)
    matching = await get(client, upload_id, Range="bytes=50-", If_Range=ETAG)
    assert matching.status_code == 416
    assert matching.headers["Content-Range"] == "bytes */10"
    assert_whole(await get(client, upload_id, Range="bytes=50-", If_Range='"other"'))
