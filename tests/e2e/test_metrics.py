"""``serve --workers 2``: GET /metrics adds up what every worker counted."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.support import HTTP_TIMEOUT, OFFSET_CT, TUS, Servers, create_upload, serve_command

pytestmark = pytest.mark.e2e

UPLOADS = 20


def created_total(base_url: str) -> float:
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        response = client.get(f"{base_url}/metrics")
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "upload_uploads_created_total":
                return sample.value
    raise AssertionError("upload_uploads_created_total is missing")


def test_metrics_add_up_uploads_created_on_both_workers(servers: Servers, tmp_path: Path) -> None:
    stale = tmp_path / "data" / "metrics" / "counter_999999.db"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"a previous run's values")
    server = servers.start(command=[*serve_command(), "--workers", "2"])
    assert server.data_dir == tmp_path / "data"
    assert not stale.exists()  # wiped at start: old counters would be counted again
    for _ in range(UPLOADS):  # a connection of its own each, so the kernel spreads them
        with httpx.Client(timeout=HTTP_TIMEOUT) as client:
            url = create_upload(client, server.base_url, 3)
            headers = {**TUS, "Upload-Offset": "0", "Content-Type": OFFSET_CT}
            assert client.patch(url, headers=headers, content=b"abc").status_code == 204
    metrics_dir = server.data_dir / "metrics"
    pids = {path.stem.rsplit("_", 1)[1] for path in metrics_dir.glob("counter_*.db")}
    assert len(pids) == 2, f"expected counters from both workers, found {sorted(pids)}"
    for _ in range(4):  # whichever worker answers, it reports every worker's uploads
        assert created_total(server.base_url) == UPLOADS
