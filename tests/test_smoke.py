from __future__ import annotations

import httpx

from tests.conftest import TUS


async def test_create_patch_download(client: httpx.AsyncClient) -> None:
    created = await client.post("/files/", headers={**TUS, "Upload-Length": "5"})
    assert created.status_code == 201
    location = created.headers["Location"]
    patched = await client.patch(
        location,
        headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
        content=b"hello",
    )
    assert patched.status_code == 204, patched.text
    assert patched.headers["Upload-Offset"] == "5"
    downloaded = await client.get(location)
    assert downloaded.content == b"hello"
