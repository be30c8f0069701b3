"""GET /metrics: the counters, gauges and histograms move as uploads are driven over HTTP."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TUS, make_settings
from tests.tus_http_helpers import create, patch, serve, set_expires_at
from upload_service.errors import Locked
from upload_service.events import NoEvents
from upload_service.locking.memory import MemoryLocker
from upload_service.locking.metered import MeteredLocker
from upload_service.ops.metrics import PrometheusMetrics
from upload_service.settings import Settings

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def sha256_metadata(data: bytes) -> str:
    return "sha256 " + base64.b64encode(hashlib.sha256(data).hexdigest().encode()).decode()


async def test_upload_counters_follow_creation_patch_delete_and_failure(
    settings: Settings,
) -> None:
    async with serve(settings) as served:
        client = served.client
        before = await scrape(client)
        assert value(before, "upload_uploads_created_total") == 0

        finished = await create(client, 10)
        assert (await patch(client, finished, 0, b"0123456789")).status_code == 204
        await served.services.handler.lifecycle.verify(finished)  # finished off the request
        doomed = await create(client, 5, body=b"abc")
        deleted = await client.delete(f"/files/{doomed}", headers=TUS)
        assert deleted.status_code == 204
        wrong = await create(client, 4, metadata=sha256_metadata(b"not these bytes"))
        assert (await patch(client, wrong, 0, b"abcd")).status_code == 204
        await served.services.handler.lifecycle.verify(wrong)

        after = await scrape(client)
        assert value(after, "upload_uploads_created_total") == 3
        assert value(after, "upload_uploads_finished_total") == 1
        assert value(after, "upload_uploads_failed_total") == 1
        assert value(after, "upload_uploads_terminated_total") == 1
        assert value(after, "upload_uploads_expired_total") == 0
        assert value(after, "upload_received_bytes_total") == 10 + 3 + 4
        assert value(after, "upload_active_uploads") == 0
        acquired = value(after, "upload_lock_wait_seconds_count", outcome="acquired")
        assert acquired >= 4  # creation with data, two PATCHes, a DELETE (and verifications)


async def test_expiry_through_the_lifecycle_is_counted(settings: Settings) -> None:
    async with serve(settings) as served:
        upload_id = await create(served.client, 10)
        await set_expires_at(served.services, upload_id, datetime.now(UTC) - timedelta(hours=1))
        assert await served.services.handler.lifecycle.expire() == 1
        samples = await scrape(served.client)
        assert value(samples, "upload_uploads_expired_total") == 1


async def test_request_durations_are_labelled_by_route_template(settings: Settings) -> None:
    async with serve(settings) as served:
        client = served.client
        upload_id = await create(client, 10)
        assert (await patch(client, upload_id, 0, b"01234")).status_code == 204
        assert (await patch(client, upload_id, 3, b"x")).status_code == 409
        assert (await client.get("/no/such/page")).status_code == 404
        samples = await scrape(client)

    def count(method: str, route: str, status: str) -> float:
        labels = {"method": method, "route": route, "status": status}
        return value(samples, "upload_request_duration_seconds_count", **labels)

    assert count("POST", "/files/", "201") == 1
    assert count("PATCH", "/files/{upload_id}", "204") == 1
    assert count("PATCH", "/files/{upload_id}", "409") == 1
    assert count("GET", "unmatched", "404") == 1
    routes = {dict(labels).get("route") for _, labels in samples}
    assert not any(upload_id in (route or "") for route in routes)


async def test_the_event_loop_lag_gauge_is_exposed(settings: Settings) -> None:
    async with serve(settings) as served:
        samples = await scrape(served.client)
        assert value(samples, "upload_event_loop_lag_seconds") >= 0
        assert ("upload_event_loop_lag_seconds", frozenset()) in samples


async def test_metrics_can_be_turned_off(tmp_path: Path, database_url: str) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    async with serve(make_settings(data_dir, database_url, metrics=False)) as served:
        assert (await served.client.get("/metrics")).status_code == 404


def test_apps_have_registries_of_their_own() -> None:
    first, second = PrometheusMetrics(), PrometheusMetrics()
    first.created()
    assert b"upload_uploads_created_total 1.0" in first.render()
    assert b"upload_uploads_created_total 0.0" in second.render()


async def test_lock_waits_and_release_requests_are_counted() -> None:
    metrics = PrometheusMetrics()
    locker = MeteredLocker(MemoryLocker(), metrics)

    async def wants_it() -> None:
        with pytest.raises(Locked):
            async with locker.lock("a", wait=0, preempt=True):
                pass

    async with locker.lock("a", wait=0) as holder:
        async with anyio.create_task_group() as group:
            group.start_soon(wants_it)
        assert holder.release_requested
    text = metrics.render().decode()
    assert 'upload_lock_wait_seconds_count{outcome="acquired"} 1.0' in text
    assert 'upload_lock_wait_seconds_count{outcome="timeout"} 1.0' in text
    assert "upload_lock_release_requests_total 1.0" in text
    assert "upload_lock_releases_honoured_total 1.0" in text


def test_the_default_events_do_nothing() -> None:
    events = NoEvents()
    with events.receiving():
        events.received(3)
