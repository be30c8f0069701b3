"""The real ``upload-service serve --workers 2`` with ``UPLOAD_LOG_FORMAT=json``: every line of
its output (the supervisor's, each worker's, the migration child's) is one JSON object, and a
PATCH's access line carries the request id, the upload id and the bytes; no secret is logged."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from tests.e2e.support import OFFSET_CT, TUS, Servers, serve_command, upload_id_of

pytestmark = pytest.mark.e2e


def test_serve_logs_json_lines_in_every_worker(servers: Servers, http: httpx.Client) -> None:
    server = servers.start(
        command=[*serve_command(), "--workers", "2"], env={"UPLOAD_LOG_FORMAT": "json"}
    )
    secret_name = "confidential-holiday.mp4"
    created = http.post(
        f"{server.base_url}/files/",
        headers={
            **TUS,
            "Upload-Length": "5",
            "Upload-Metadata": "filename " + base64.b64encode(secret_name.encode()).decode(),
            "X-Request-Id": "e2e-create-1",
        },
    )
    assert created.status_code == 201, created.text
    assert created.headers["X-Request-Id"] == "e2e-create-1"
    url = str(httpx.URL(server.base_url).join(created.headers["Location"]))
    upload_id = upload_id_of(url)
    patched = http.patch(
        url,
        params={"signature": "the-signature"},
        headers={
            **TUS,
            "Upload-Offset": "0",
            "Content-Type": OFFSET_CT,
            "Authorization": "Bearer the-bearer-token",
            "X-Request-Id": "e2e-patch-1",
        },
        content=b"hello",
    )
    assert patched.status_code == 204, patched.text
    bad = http.get(f"{server.base_url}/healthz", headers={"X-Request-Id": "not sane!"})
    generated = bad.headers["X-Request-Id"]
    assert generated != "not sane!"
    server.stop()

    text = server.log_text()
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON log line: {line!r}\n{text}")
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record), record
    started = [r for r in records if str(r["message"]).startswith("Started server process")]
    assert len(started) == 2, text  # both workers log through our configuration
    access = [r for r in records if r["logger"] == "upload_service.access"]
    (patch_line,) = [r for r in access if r.get("request_id") == "e2e-patch-1"]
    assert patch_line["upload_id"] == upload_id
    assert (patch_line["method"], patch_line["path"], patch_line["status"]) == (
        "PATCH",
        f"/files/{upload_id}",
        204,
    )
    assert patch_line["bytes_received"] == 5
    assert patch_line["client"] == "127.0.0.1"
    assert patch_line["query"] == "signature=REDACTED"
    (create_line,) = [r for r in access if r.get("request_id") == "e2e-create-1"]
    assert create_line["upload_id"] == upload_id
    assert any(r.get("request_id") == generated for r in access)
    assert not any(r["logger"] == "uvicorn.access" for r in records)  # ours replaced it
    for secret in ("the-signature", "the-bearer-token", secret_name):
        assert secret not in text
