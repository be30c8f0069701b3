"""Scenario 7, ``lockwait``: how long a request waits for the lock of an upload whose holder, a
replica, was killed in the middle of a PATCH.

Two ``upload-service serve`` processes, replicas A and B, share one data directory and one database
(SQLite in that directory for ``ours``, the measurement's fresh PostgreSQL database for ``ours-pg``)
with ``UPLOAD_LOCKER=file`` or ``UPLOAD_LOCKER=postgres``. An upload is created, A receives a
paced PATCH (``lockwait_rate``), and once B's progress endpoint shows bytes received A is killed
with SIGKILL (its whole process tree). From the kill on, B is asked what a client would ask: HEAD
for the offset, then a small PATCH from the offset B reported, both again after a 423 or a 409.
The two figures are the milliseconds from the kill to B's first HEAD answer and to B's first
successful PATCH; the bytes do not matter, the wait for the lock does.

A server that does not know ``UPLOAD_LOCKER`` ignores it and uses its file locker; the locker in
effect is recorded (``locker``) and shown in the table's note.
"""

from __future__ import annotations

import http.client
import json
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench import client, procfs
from bench.client import ClientError, Connection, Reply
from bench.scenarios import Context, Extra, Measured
from bench.servers import Launch, RunningServer

PROBE_BYTES = 64 * 1024  # the PATCH on replica B: enough to need the lock, no more
RETRY_PAUSE = 0.02  # seconds between a client's attempts after a 423 or a 409
POLL_PAUSE = 0.02  # seconds between progress readings before the kill


def locker_setting(postgres: bool) -> str:
    return "postgres" if postgres else "file"


def locker_in_effect(wanted: str) -> str:
    """``wanted``, or what the server uses instead when it has no ``UPLOAD_LOCKER`` setting (the
    bench runs the server from this same checkout, so its settings class tells)."""
    from upload_service import settings

    if "locker" in getattr(settings, "FLAT_NAMES", settings.Settings.model_fields):
        return wanted
    return "file (UPLOAD_LOCKER unknown to this upload_service)"


class _DoomedPatch(threading.Thread):
    """The paced PATCH on replica A; it is expected to break when A is killed."""

    def __init__(self, ctx: Context, server: RunningServer, path: str, size: int) -> None:
        super().__init__(name="lockwait-patch", daemon=True)
        self.ctx = ctx
        self.server = server
        self.path = path
        self.size = size
        self.reply: Reply | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        headers = {**client.TUS, "Upload-Offset": "0", "Content-Type": client.OFFSET_CT}
        try:
            with (
                Connection(self.server.base_url, self.ctx.config.request_timeout) as conn,
                self.ctx.source.open("rb") as f,
            ):
                rate = self.ctx.config.lockwait_rate
                self.reply = conn.send_file("PATCH", self.path, headers, f, 0, self.size, rate)
        except (OSError, http.client.HTTPException, ClientError) as exc:
            self.error = exc


def _received(conn: Connection, upload_id: str) -> int:
    reply = conn.request("GET", f"/api/uploads/{upload_id}", {})
    if reply.status != 200:
        raise ClientError(f"GET /api/uploads/{upload_id} answered {reply.status}")
    document = json.loads(reply.body)
    value = document.get("received") if isinstance(document, dict) else None
    if not isinstance(value, int):
        raise ClientError(f"GET /api/uploads/{upload_id} has no 'received': {reply.body[:200]!r}")
    return value


def _wait_for_bytes(ctx: Context, conn: Connection, upload_id: str, patch: _DoomedPatch) -> int:
    deadline = time.monotonic() + ctx.config.lockwait_seconds
    while time.monotonic() < deadline:
        if not patch.is_alive():
            raise ClientError(f"the PATCH on replica A ended before the kill: {patch.error!r}")
        received = _received(conn, upload_id)
        if received > 0:
            return received
        time.sleep(POLL_PAUSE)
    raise ClientError(f"replica B saw no bytes received within {ctx.config.lockwait_seconds} s")


@dataclass(frozen=True, slots=True)
class Resumed:
    head_ms: float  # from the kill to the first HEAD answer with an offset
    patch_ms: float  # from the kill to the first PATCH answered 204
    attempts: int  # HEAD (+ PATCH) rounds it took
    offset: int  # what B reported and the PATCH started from


def _resume_on(ctx: Context, server: RunningServer, path: str, killed_at: float) -> Resumed:
    """HEAD then PATCH on ``server`` until the PATCH succeeds, as a client resumes."""
    size = ctx.config.lockwait_bytes
    deadline = killed_at + ctx.config.lockwait_timeout
    head_ms: float | None = None
    attempts = 0
    last = "no answer"
    conn = Connection(server.base_url, ctx.config.request_timeout)
    try:
        with ctx.source.open("rb") as f:
            while True:
                attempts += 1
                try:
                    head = conn.request("HEAD", path, client.TUS)
                    offset_text = head.headers.get("upload-offset")
                    if head.status in (200, 204) and offset_text is not None:
                        if head_ms is None:
                            head_ms = (time.perf_counter() - killed_at) * 1000
                        offset = int(offset_text)
                        count = min(PROBE_BYTES, size - offset)
                        if count <= 0:
                            raise ClientError(f"B reports offset {offset} of {size}: nothing left")
                        headers = {
                            **client.TUS,
                            "Upload-Offset": str(offset),
                            "Content-Type": client.OFFSET_CT,
                        }
                        answer = conn.send_file("PATCH", path, headers, f, offset, count)
                        if answer.status == 204:
                            patch_ms = (time.perf_counter() - killed_at) * 1000
                            return Resumed(head_ms, patch_ms, attempts, offset)
                        if answer.status not in (409, 423):
                            raise ClientError(f"PATCH on replica B answered {answer.status}")
                        last = f"PATCH {answer.status}"
                    elif head.status == 423:
                        last = "HEAD 423"
                    else:
                        raise ClientError(f"HEAD on replica B answered {head.status}")
                except (OSError, http.client.HTTPException) as exc:
                    last = repr(exc)  # B closed the connection after an early answer
                    conn.close()
                    conn = Connection(server.base_url, ctx.config.request_timeout)
                server.check_alive()
                if time.perf_counter() > deadline:
                    raise ClientError(
                        f"replica B gave no lock {ctx.config.lockwait_timeout} s after the kill "
                        f"({attempts} attempts, last: {last})"
                    )
                time.sleep(RETRY_PAUSE)
    finally:
        conn.close()


def _measure(
    ctx: Context, a: RunningServer, b: RunningServer, helpers: tuple[int, ...]
) -> Measured:
    size = ctx.config.lockwait_bytes
    with Connection(a.base_url, ctx.config.request_timeout) as conn:
        path = client.create(conn, a.spec.files_path, size)
    upload_id = path.rstrip("/").rsplit("/", 1)[-1]
    noise = procfs.Noise(a.pid, b.pid, *helpers)
    patch = _DoomedPatch(ctx, a, path, size)
    patch.start()
    try:
        with Connection(b.base_url, ctx.config.request_timeout) as conn:
            received = _wait_for_bytes(ctx, conn, upload_id, patch)
        a.remember_tree()
        noise.last_reading(a.pid)
        killed_at = time.perf_counter()
        a.kill()
        reaped_ms = (time.perf_counter() - killed_at) * 1000
        resumed = _resume_on(ctx, b, path, killed_at)
        foreign = noise.foreign_cores()
    finally:
        if a.running:  # failed before the kill: end the PATCH with its server
            a.kill()
        patch.join(ctx.config.request_timeout)
    if patch.reply is not None:
        raise ClientError(
            f"the PATCH on replica A was answered {patch.reply.status} despite the kill"
        )
    extras: dict[str, Extra] = {
        "attempts": resumed.attempts,
        "offset_on_b": resumed.offset,
        "received_before_kill": received,
        "reaped_ms": reaped_ms,  # kill to A reaped, before B is first asked
        "foreign_cores": round(foreign, 3),
    }
    return Measured({"lockwait.patch": resumed.patch_ms, "lockwait.head": resumed.head_ms}, extras)


def lockwait(ctx: Context, launch: Launch) -> Measured:
    wanted = locker_setting(launch.spec.postgres)
    shared = Path(tempfile.mkdtemp(prefix=f"lockwait-{launch.spec.key}-", dir=launch.workdir))
    replicas: list[RunningServer] = []
    try:
        env = {"UPLOAD_LOCKER": wanted}
        # A first: it migrates the shared database before B starts on it
        a = launch.start(env=env, data_dir=shared)
        replicas.append(a)
        b = launch.start(env=env, data_dir=shared)
        replicas.append(b)
        measured = _measure(ctx, a, b, launch.helper_pids)
    finally:
        for replica in reversed(replicas):
            replica.stop()
        shutil.rmtree(shared, ignore_errors=True)
    measured.extras["locker"] = locker_in_effect(wanted)
    return measured
