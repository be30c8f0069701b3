"""Upload tickets over HTTP on an app on SQLite (README "Upload tickets"): an issuer (a JWT or an
API key) asks ``POST /api/tickets`` for a ticket, and its bearer may create at most the ticket's
uploads, then reach only those; the uploads are the issuer's (owner, quotas, listing, hooks),
carry the ticket's id and its metadata; the ticket's caps hold on every path (a declared length,
deferred lengths, concatenation, form uploads); an expired, revoked or used-up ticket is refused
with a one-line reason; bad requests for a ticket are 400s. The races over a ticket's last use are
the repository contract's (``tests/test_contract_repository.py``)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from tests.conftest import TUS
from tests.test_auth import auth_settings, bearer, hs256
from tests.tus_http_helpers import OFFSET_CT, Served, count_uploads, serve, stored_files
from upload_service.db.models import TicketRow
from upload_service.settings import Settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def data_dir(sqlite_dir: Path) -> Path:
    return sqlite_dir


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[Served]:
    async with serve(settings) as result:
        yield result


async def issue(
    client: httpx.AsyncClient, token: str | None = None, **asked: Any
) -> dict[str, Any]:
    headers = {} if token is None else bearer(token)
    response = await client.post("/api/tickets", json=asked, headers=headers)
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def create(
    client: httpx.AsyncClient, ticket: str, length: int | None = 10, **extra: str
) -> httpx.Response:
    headers = {**TUS, **bearer(ticket), **{k.replace("_", "-"): v for k, v in extra.items()}}
    if length is None:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(length)
    return await client.post("/files/", headers=headers)


def upload_id(response: httpx.Response) -> str:
    assert response.status_code == 201, response.text
    return response.headers["Location"].rsplit("/", 1)[1]


def message(response: httpx.Response) -> str:
    if response.headers.get("content-type", "").startswith("application/json"):
        return str(response.json()["error"]["message"])
    return response.text


async def test_a_ticket_makes_its_one_upload_of_the_issuers_and_reaches_only_that(
    data_dir: Path,
) -> None:
    # hooks on (a callable that records), so that the upload's events are written
    settings = auth_settings(data_dir, hook_post="python:tests.hook_functions:record")
    async with served(settings) as app:
        client = app.client
        alice = hs256("alice")
        others = await client.post(
            "/files/", headers={**TUS, **bearer(alice), "Upload-Length": "3"}
        )
        other_id = upload_id(others)
        answer = await issue(client, alice, metadata={"tenant": "t1", "filename": "forced.mp4"})
        ticket = answer["ticket"]
        assert ticket.startswith("ut_")
        assert answer["state"] == "active"
        assert (answer["uploads"], answer["used"]) == (1, 0)
        assert answer["tus_endpoint"] == "http://testserver/files/"
        assert answer["companion_endpoint"] == f"http://testserver/companion/{ticket}"
        assert answer["expires_at"] > answer["created_at"]

        name = base64.b64encode(b"mine.mp4").decode()
        made = upload_id(await create(client, ticket, 3, Upload_Metadata=f"filename {name}"))
        # the ticket's bearer finishes, reads and sees its upload
        patched = await client.patch(
            f"/files/{made}",
            headers={**TUS, **bearer(ticket), "Upload-Offset": "0", "Content-Type": OFFSET_CT},
            content=b"abc",
        )
        assert patched.status_code == 204, patched.text
        head = await client.head(f"/files/{made}", headers={**TUS, **bearer(ticket)})
        assert head.headers["Upload-Offset"] == "3"
        status = await client.get(f"/api/uploads/{made}", headers=bearer(ticket))
        assert status.status_code == 200
        shown = status.json()
        assert shown["owner"] == "jwt:https%3A//issuer.test:alice"  # the issuer's
        assert shown["ticket"] == answer["id"]
        # the ticket's metadata is stamped, over the client's own
        assert shown["metadata"] == {"filename": "forced.mp4", "tenant": "t1"}
        assert (await client.get(f"/files/{made}", headers=bearer(ticket))).content == b"abc"

        # used up: no second upload, in any way, and nothing of it stored
        files = await stored_files(app.services)
        second = await create(client, ticket, 3)
        assert second.status_code == 403
        assert "has created every upload it may" in message(second)
        assert await stored_files(app.services) == files
        # nothing else: not another upload of the issuer's, no listing, no tickets
        for method, path in [
            ("HEAD", f"/files/{other_id}"),
            ("GET", f"/api/uploads/{other_id}"),
            ("DELETE", f"/files/{other_id}"),
        ]:
            response = await client.request(method, path, headers={**TUS, **bearer(ticket)})
            assert response.status_code == 404, (method, path)
        listing = await client.get("/api/uploads", headers=bearer(ticket))
        assert listing.status_code == 403
        assert "cannot list" in message(listing)
        nested = await client.post("/api/tickets", json={}, headers=bearer(ticket))
        assert nested.status_code == 403
        assert "cannot issue tickets" in message(nested)
        peek = await client.get(f"/api/tickets/{answer['id']}", headers=bearer(ticket))
        assert peek.status_code == 403

        # the issuer sees the upload as its own, and the ticket's uses
        mine = await client.get("/api/uploads", headers=bearer(alice))
        assert made in [upload["id"] for upload in mine.json()["uploads"]]
        shown = (await client.get(f"/api/tickets/{answer['id']}", headers=bearer(alice))).json()
        assert (shown["state"], shown["used"], shown["upload_ids"]) == ("used_up", 1, [made])
        assert shown["ticket"] is None  # the bearer string is shown once
        # another issuer does not see it
        bob = await client.get(f"/api/tickets/{answer['id']}", headers=bearer(hs256("bob")))
        assert bob.status_code == 404
        # the post-create event carries the ticket's id
        assert app.services.outbox is not None
        events = await app.services.outbox.events_of(made)
        assert [event.type.value for event in events][:1] == ["post-create"]
        assert all(event.upload["ticket"] == answer["id"] for event in events)

        # a ticket's bearer may delete its own upload
        deleted = await client.delete(f"/files/{made}", headers={**TUS, **bearer(ticket)})
        assert deleted.status_code == 204


async def test_revoked_expired_and_bad_tickets_are_401s_with_the_reason(data_dir: Path) -> None:
    async with served(auth_settings(data_dir)) as app:
        client = app.client
        alice = hs256("alice")
        revoked = await issue(client, alice, uploads=3)
        made = upload_id(await create(client, revoked["ticket"]))
        assert (
            await client.delete(f"/api/tickets/{revoked['id']}", headers=bearer(alice))
        ).status_code == 204
        for response in [
            await create(client, revoked["ticket"]),
            await client.head(f"/files/{made}", headers={**TUS, **bearer(revoked["ticket"])}),
            await client.get(f"/api/uploads/{made}", headers=bearer(revoked["ticket"])),
        ]:
            assert response.status_code == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        refused = await create(client, revoked["ticket"])
        assert "upload ticket was revoked" in refused.text
        shown = await client.get(f"/api/tickets/{revoked['id']}", headers=bearer(alice))
        assert shown.json()["state"] == "revoked"
        assert (await client.get(f"/api/uploads/{made}", headers=bearer(alice))).status_code == 200

        expired = await issue(client, alice)
        async with app.services.engine.begin() as connection:
            await connection.execute(
                update(TicketRow)
                .where(TicketRow.id == expired["id"])
                .values(expires_at=app.services.handler.clock() - timedelta(seconds=1))
            )
        late = await create(client, expired["ticket"])
        assert late.status_code == 401
        assert "upload ticket has expired" in late.text

        good = revoked["ticket"]
        forged = good[:-4] + ("0000" if not good.endswith("0000") else "1111")
        for bad in [forged, "ut_" + "a" * 32 + "_" + "b" * 40]:
            response = await create(client, bad)
            assert response.status_code == 401, bad
            assert "invalid upload ticket" in response.text
        # not of a ticket's form: a token for the other authenticators (which refuse it)
        malformed = await create(client, "ut_nonsense")
        assert malformed.status_code == 401
        assert "not a valid JWT or a known API key" in malformed.text
        before = await count_uploads(app.services)
        assert before == 1  # nothing refused was made

        # issuer-only management
        unknown = await client.delete("/api/tickets/" + "f" * 32, headers=bearer(alice))
        assert unknown.status_code == 404
        anonymous = await client.post("/api/tickets", json={})
        assert anonymous.status_code == 401


async def test_a_tickets_caps_hold_on_every_path(data_dir: Path) -> None:
    settings = auth_settings(data_dir, max_size=1000)
    mp4 = base64.b64encode(b"video/mp4").decode()
    png = base64.b64encode(b"image/png").decode()
    async with served(settings) as app:
        client = app.client
        alice = hs256("alice")
        answer = await issue(client, alice, max_size=8, allowed_types=["video/*"], uploads=10)
        assert (answer["max_size"], answer["allowed_types"]) == (8, ["video/*"])
        ticket = answer["ticket"]
        # a declared length
        over = await create(client, ticket, 9, Upload_Metadata=f"filetype {mp4}")
        assert over.status_code == 413
        typed = await create(client, ticket, 5, Upload_Metadata=f"filetype {png}")
        assert typed.status_code == 415
        # a deferred length, declared later
        deferred = upload_id(await create(client, ticket, None, Upload_Metadata=f"filetype {mp4}"))
        declared = await client.patch(
            f"/files/{deferred}",
            headers={
                **TUS,
                **bearer(ticket),
                "Upload-Offset": "0",
                "Content-Type": OFFSET_CT,
                "Upload-Length": "9",
            },
        )
        assert declared.status_code == 413
        # concatenation: parts of the ticket's own, and a final of them over the cap
        parts = [
            upload_id(
                await create(
                    client, ticket, 5, Upload_Concat="partial", Upload_Metadata=f"filetype {mp4}"
                )
            )
            for _ in range(2)
        ]
        final = await client.post(
            "/files/",
            headers={
                **TUS,
                **bearer(ticket),
                "Upload-Concat": "final;" + " ".join(f"/files/{part}" for part in parts),
            },
        )
        assert final.status_code == 413, final.text
        # a form upload
        form = await client.post(
            "/api/uploads",
            headers=bearer(ticket),
            files={"file": ("a.mp4", b"0123456789", "video/mp4")},
        )
        assert form.status_code == 413, form.text
        # the uses counted are the uploads made and kept: the deferred one and the two parts;
        # the form's file, made before its body was found too large, gave its use back
        shown = (await client.get(f"/api/tickets/{answer['id']}", headers=bearer(alice))).json()
        assert shown["used"] == 3

        # a ticket never allows more than its issuer: the service's cap and the token's types
        capped = await issue(client, hs256("carol", upload_types="video/*"), max_size=10**9)
        assert capped["allowed_types"] == ["video/*"]
        wider = await client.post(
            "/api/tickets",
            json={"allowed_types": ["image/*"]},
            headers=bearer(hs256("carol", upload_types="video/*")),
        )
        assert wider.status_code == 403
        assert "not among the types your credential may upload" in message(wider)
        big = await create(client, capped["ticket"], 1001, Upload_Metadata=f"filetype {mp4}")
        assert big.status_code == 413

        # a one-use ticket whose first file is refused as it streams may still make one upload
        once = await issue(client, alice, max_size=4)
        refused = await client.post(
            "/files/",
            headers={
                **TUS,
                **bearer(once["ticket"]),
                "Upload-Defer-Length": "1",
                "Content-Type": OFFSET_CT,
            },
            content=b"0123456789",
        )
        assert refused.status_code == 413, refused.text
        assert upload_id(await create(client, once["ticket"], 4))


async def test_a_ticket_with_uploads_left_may_make_a_final_of_its_parts(data_dir: Path) -> None:
    async with served(auth_settings(data_dir)) as app:
        client = app.client
        answer = await issue(client, hs256("alice"), uploads=2)
        ticket = answer["ticket"]
        part = upload_id(await create(client, ticket, 0, Upload_Concat="partial"))
        final = await client.post(
            "/files/",
            headers={**TUS, **bearer(ticket), "Upload-Concat": f"final;/files/{part}"},
        )
        assert final.status_code == 201, final.text
        again = await client.post(
            "/files/",
            headers={**TUS, **bearer(ticket), "Upload-Concat": f"final;/files/{part}"},
        )
        assert again.status_code == 403


@pytest.mark.parametrize(
    ("asked", "reason"),
    [
        ({"uploads": 0}, "uploads"),
        ({"uploads": 10_001}, "uploads must be between 1 and 10000"),
        ({"expires_in": 86_401}, "expires_in"),
        ({"expires_in": 0}, "expires_in"),
        ({"max_size": -1}, "max_size"),
        ({"allowed_types": ["not a type"]}, "is not a media type"),
        ({"metadata": {"bad key": "v"}}, "must be printable ASCII without spaces"),
        ({"metadata": {f"k{n}": "v" for n in range(33)}}, "at most 32"),
        ({"colour": "blue"}, "colour"),
        ({"uploads": "two"}, "uploads"),
    ],
)
async def test_bad_ticket_requests_are_400s_naming_the_field(
    data_dir: Path, asked: dict[str, Any], reason: str
) -> None:
    async with served(auth_settings(data_dir)) as app:
        response = await app.client.post("/api/tickets", json=asked, headers=bearer(hs256()))
        assert response.status_code == 400, response.text
        assert reason in message(response)
        not_json = await app.client.post(
            "/api/tickets",
            content=b"{",
            headers={**bearer(hs256()), "Content-Type": "application/json"},
        )
        assert not_json.status_code == 400


async def test_an_open_service_issues_tickets_whose_limits_still_hold(sqlite_dir: Path) -> None:
    from tests.conftest import make_settings

    async with served(make_settings(sqlite_dir)) as app:
        client = app.client
        answer = await issue(client, None, uploads=1)
        ticket = answer["ticket"]
        upload_id(await create(client, ticket))
        assert (await create(client, ticket)).status_code == 403
        assert (await client.get("/api/uploads", headers=bearer(ticket))).status_code == 403
        anyone = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
        assert anyone.status_code == 201  # the open service itself is still open
        other = anyone.headers["Location"].rsplit("/", 1)[1]
        reach = await client.head(f"/files/{other}", headers={**TUS, **bearer(ticket)})
        assert reach.status_code == 404


async def test_the_endpoints_a_ticket_names_follow_the_tus_mount_path(sqlite_dir: Path) -> None:
    """With the tus endpoint elsewhere (``UPLOAD_BASE_PATH``), ``tus_endpoint`` follows it and
    ``companion_endpoint`` stays at the service's root, where its routes are."""
    from tests.conftest import make_settings

    async with served(make_settings(sqlite_dir, base_path="/v1/uploads")) as app:
        answer = await issue(app.client, None)
        assert answer["tus_endpoint"] == "http://testserver/v1/uploads/"
        assert answer["companion_endpoint"] == f"http://testserver/companion/{answer['ticket']}"
        base = answer["companion_endpoint"].removeprefix("http://testserver")
        # the path answers (the store here is local: direct uploads are a 501, not a 404)
        reached = await app.client.post(f"{base}/s3/multipart", json={})
        assert reached.status_code == 501


@pytest.mark.parametrize("taken", ["/s3", "/companion", "/companion/files"])
def test_the_tus_endpoint_cannot_sit_on_the_direct_uploads_paths(
    sqlite_dir: Path, taken: str
) -> None:
    from tests.conftest import make_settings
    from upload_service.settings import ConfigError

    with pytest.raises(ConfigError, match=r"UPLOAD_BASE_PATH: .*must not be or lie under"):
        make_settings(sqlite_dir, base_path=taken)
