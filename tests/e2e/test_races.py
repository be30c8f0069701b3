"""The races that the reliability issue lists, each tried many times over against a real server.

Resume right after a cut: a client whose connection broke mid-body asks HEAD at once and PATCHes
from there. The broken request is still committing what arrived when that HEAD comes; HEAD must
answer the offset that request ends at (it waits for the request, as a PATCH would), or the next
PATCH finds its offset stale and gets 409.
"""

from __future__ import annotations

import random

import httpx
import pytest

from tests.e2e.support import (
    OFFSET_CT,
    TUS,
    KiB,
    MiB,
    RawPatch,
    Servers,
    Source,
    create_upload,
    download_sha256,
    head_offset,
    sha256_file,
    wait_until_ready,
)

pytestmark = pytest.mark.e2e

CUTS = 40


@pytest.mark.parametrize("close", ["fin", "reset"])
def test_head_and_patch_at_once_after_a_cut_see_the_cut_requests_end(
    servers: Servers, http: httpx.Client, source: Source, close: str
) -> None:
    server = servers.start()
    rng = random.Random(20261207)
    size = 48 * MiB + 4321
    small = Source(path=source.path, size=size, sha256="")  # the first bytes of the source
    url = create_upload(http, server.base_url, size)
    offset = 0
    for cut in range(CUTS):
        sent = rng.randint(1, 768 * KiB)
        patch = RawPatch(url, small, offset, limit=sent, reset=close == "reset")
        patch.run()  # sends ``sent`` bytes of a longer body, then closes (FIN or RST)
        assert patch.error is None, patch.error
        at_once = head_offset(http, url)
        # What arrived before the close may be cut short (uvicorn drops a body's last pieces
        # once it sees the client gone), never extended; the PATCH below shows it is current.
        assert offset <= at_once <= offset + sent, (cut, offset, sent, at_once)
        piece = min(rng.randint(1, 256 * KiB), size - at_once)
        with source.path.open("rb") as stream:
            stream.seek(at_once)
            body = stream.read(piece)
        response = http.patch(
            url,
            content=body,
            headers={**TUS, "Upload-Offset": str(at_once), "Content-Type": OFFSET_CT},
        )
        assert response.status_code == 204, (cut, at_once, response.status_code, response.text)
        offset = int(response.headers["Upload-Offset"])
        assert offset == at_once + piece
    with source.path.open("rb") as stream:
        stream.seek(offset)
        response = http.patch(
            url,
            content=stream.read(size - offset),
            headers={**TUS, "Upload-Offset": str(offset), "Content-Type": OFFSET_CT},
        )
    assert response.status_code == 204, response.text
    wait_until_ready(http, url)
    assert download_sha256(http, url) == (sha256_file(source.path, size), size)
