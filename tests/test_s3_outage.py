"""The S3 endpoint goes away mid-upload for about five seconds and comes back, for real: the
service reaches moto through a TCP proxy on 127.0.0.1 that the test cuts (every connection
dropped, new ones refused) and restores. Meanwhile requests that need the store answer 503 with
``Retry-After`` (never a 500), HEAD still answers the committed offset, nothing acknowledged is
lost, and once the endpoint is back the upload resumes without a restart and ends intact."""

from __future__ import annotations

import hashlib
import random
import time
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import httpx
import pytest

from tests.conftest import TUS
from tests.proxy import CuttableProxy
from tests.test_s3_service import PART, s3_settings
from tests.tus_http_helpers import create, head, serve

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
OUTAGE = 5.0  # seconds the endpoint stays away
OFFSET_CT = "application/offset+octet-stream"


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, (response.status_code, response.text)
    assert response.headers["Retry-After"].isdigit()
    assert response.headers["Tus-Resumable"] == "1.0.0"


def offset_of(response: httpx.Response) -> int:
    return int(response.headers["Upload-Offset"])


async def test_the_s3_endpoint_gone_for_5_s_mid_upload_is_503_then_resumes(
    aws_credentials: None,
    data_dir: Path,
    database_url: str,
    moto_endpoint: str,
    bucket: str,
) -> None:
    target = urlsplit(moto_endpoint)
    proxy = CuttableProxy(target.hostname or "127.0.0.1", target.port or 80)
    await proxy.start()
    data = random.Random(5).randbytes(3 * PART + 12_345)
    try:
        settings = s3_settings(data_dir, database_url, f"http://127.0.0.1:{proxy.port}", bucket)
        async with serve(settings) as served:
            client = served.client
            upload_id = await create(client, len(data))
            url = f"/files/{upload_id}"
            first = PART + 1000
            done = await client.patch(
                url,
                content=data[:first],
                headers={**TUS, "Upload-Offset": "0", "Content-Type": OFFSET_CT},
            )
            assert done.status_code == 204, done.text
            acknowledged = offset_of(done)

            await proxy.cut()
            answers: list[int] = []
            started = time.monotonic()
            while time.monotonic() - started < OUTAGE:
                shown = await head(client, upload_id)  # it looks at the store too: 503 or offset
                answers.append(shown.status_code)
                if shown.status_code == 200:
                    assert offset_of(shown) >= acknowledged
                    offset = offset_of(shown)
                else:
                    assert_unavailable(shown)
                    offset = acknowledged
                response = await client.patch(
                    url,
                    content=data[offset : offset + PART],
                    headers={**TUS, "Upload-Offset": str(offset), "Content-Type": OFFSET_CT},
                )
                answers.append(response.status_code)
                if response.status_code == 204:
                    acknowledged = offset_of(response)
                else:
                    assert_unavailable(response)
                await anyio.sleep(0.2)
            assert 503 in answers
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            await proxy.restore()

            with anyio.fail_after(60):  # without a restart: resume from HEAD until done
                while True:
                    shown = await head(client, upload_id)
                    if shown.status_code == 503:  # the store's client reconnects
                        await anyio.sleep(0.2)
                        continue
                    offset = offset_of(shown)
                    assert offset >= acknowledged
                    if offset == len(data):
                        break
                    response = await client.patch(
                        url,
                        content=data[offset:],
                        headers={**TUS, "Upload-Offset": str(offset), "Content-Type": OFFSET_CT},
                    )
                    assert response.status_code in (204, 503), response.text
                    if response.status_code == 503:
                        await anyio.sleep(0.2)
                state = ""
                while state != "ready":
                    state = (await client.get(f"/api/uploads/{upload_id}")).json()["state"]
                    assert state in ("receiving", "verifying", "ready"), state
                    await anyio.sleep(0.05)
            download = await client.get(url)
            assert download.status_code == 200
            assert hashlib.sha256(download.content).digest() == hashlib.sha256(data).digest()
            assert (await client.get("/readyz")).status_code == 200
    finally:
        await proxy.aclose()
