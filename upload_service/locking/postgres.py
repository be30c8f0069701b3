"""Locks shared by every process on every host that points at the same PostgreSQL cluster.

Each key is a PostgreSQL *session advisory lock* (``pg_try_advisory_lock(bigint)``, the key hashed
with a namespace into 64 bits) held on one dedicated connection per locker. Advisory locks rather
than lease rows, because the server ties them to the session: when the holder's socket closes, the
server drops its locks at once, with no expiry to tune, no clock to trust and no row to sweep. A
lease row must be renewed and must expire, and that expiry is the time every other host waits for
a crashed holder. Session locks are re-entrant per session, so requests of one process first
exclude each other in memory (a ``MemoryLocker``) and only then take the PostgreSQL lock.

Each grant carries a fencing token, the id of the autocommit transaction that took the lock
(``pg_current_xact_id()``, a 64-bit counter that never wraps): it grows strictly across the whole
cluster, needs no schema, and only a grant uses one. A waiter that preempts sends ``NOTIFY
<namespace>_lock_release, key``; every locker listens and asks its lease for that key to release.
A holder's unlock notifies ``<namespace>_lock_freed`` so that waiters retry at once; they still
poll every ``poll`` seconds, because a dead holder sends nothing.

The failure story:

- *Holder process killed* (kill -9, OOM): its kernel closes the socket, the server ends the session
  and frees its locks; waiters get them on their next try (the freed notice never comes).
- *Holder host vanished or partitioned*: nothing closes the socket. The server notices through the
  keepalives set on the session (``tcp_keepalives_*``, ``tcp_user_timeout``) and frees the locks
  within ``dead_after`` seconds. The holder notices first: a heartbeat query runs every
  ``heartbeat`` seconds with a ``timeout``, and when it fails every lease of that connection is
  marked lost (``Lease.lost``, a release request too) and the connection is discarded.
  ``heartbeat + timeout < dead_after`` is enforced, so a holder cut off from the server is told to
  stop before the server hands its locks to anyone else; the next ``lock`` connects again.
- *PostgreSQL restarted or the session killed* (``pg_terminate_backend``): every lock of the
  session is gone; the connection's close marks every lease lost at once (a close that never
  arrives is the partition above), and the next ``lock`` connects again.
- *What a stale holder can and cannot do*: "told to stop" is not "stopped", so the token is
  checked where it matters. The handler claims the upload's row with its token as soon as it holds
  the lock (``UploadRepository.claim``: only a newer token replaces the row's), every offset commit
  carries the token in the same statement, and the store checks ``Lease.lost`` in its writer
  thread before every write. So a stale holder can never move the committed offset or undo a newer
  holder's commit, and writes nothing once it knows. What remains: a write already handed to the
  disk when the session drops, in the milliseconds before the holder hears of it (a partition
  cannot cause this: the holder stops after ``heartbeat + timeout``, the server frees the lock only
  after ``dead_after``; only a session killed by an operator or a server restart mid-write can).

Point the locker at the primary, directly or through a session-pooling proxy: a standby hands
out no transaction ids and shares no advisory locks, and a transaction-pooling proxy would give
the session, and its locks, to someone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import asyncpg

from upload_service.errors import Locked, Unavailable
from upload_service.locking.base import Lease
from upload_service.locking.memory import MemoryLocker

logger = logging.getLogger("upload_service.locking")

_NAMESPACE = re.compile(r"[a-z][a-z0-9_]{0,39}")
# A failure of the server, of the way to it or of the connection's state (the client's protocol
# state machine complains when the server ended the session mid-exchange); a connection that
# raised one is dropped. Anything else is a bug and propagates.
_FAILURES: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
_TRY = "SELECT CASE WHEN pg_try_advisory_lock($1) THEN pg_current_xact_id()::text::bigint END"
_UNLOCK = "SELECT pg_advisory_unlock($1), pg_notify($2, $3)"
_MAX_KEY = 1000  # bytes; a key travels as a NOTIFY payload (at most 8000)
_RENOTIFY = 1.0  # a waiter repeats its release request this often (the holder may have changed)


def advisory_key(namespace: str, key: str) -> int:
    """The signed 64-bit advisory lock id of ``key`` in ``namespace``."""
    digest = hashlib.sha256(f"{namespace}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def asyncpg_dsn(dsn: str) -> str:
    """``dsn`` as asyncpg takes it: SQLAlchemy's ``postgresql+asyncpg://`` loses its driver."""
    scheme, sep, rest = dsn.partition("://")
    dialect, _, driver = scheme.partition("+")
    if not sep or dialect not in ("postgresql", "postgres") or driver not in ("", "asyncpg"):
        raise ValueError("not a PostgreSQL DSN (postgresql://... or postgresql+asyncpg://...)")
    return f"postgresql://{rest}"


def keepalive_settings(dead_after: float) -> dict[str, str]:
    """Session settings under which the server drops a silent client within ``dead_after`` s."""
    interval = max(1, int(dead_after // 10))
    idle = max(1, int(dead_after // 2))
    count = max(1, int((dead_after - idle) // interval))
    return {
        "tcp_keepalives_idle": str(idle),
        "tcp_keepalives_interval": str(interval),
        "tcp_keepalives_count": str(count),
        "tcp_user_timeout": str(int(dead_after * 1000)),
    }


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _report(task: asyncio.Task[None]) -> None:
    """Log a heartbeat that died of a bug; the next ``lock`` starts another."""
    if not task.cancelled() and (error := task.exception()) is not None:
        logger.error("lock heartbeat failed", exc_info=error)


@dataclass
class _Held:
    lease: Lease
    connection: asyncpg.Connection
    ident: int


class PostgresLocker:
    """A ``Locker`` over PostgreSQL advisory locks; see the module docstring for the guarantees.

    ``poll``: retry interval of a waiter. ``heartbeat``: how often a holder checks its connection.
    ``timeout``: bound of each connect and query. ``dead_after``: how long the server keeps the
    locks of a client that went silent. Nothing connects before the first ``lock``.
    """

    def __init__(
        self,
        dsn: str,
        *,
        poll: float = 0.05,
        heartbeat: float = 1.0,
        timeout: float = 2.0,
        dead_after: float = 10.0,
        namespace: str = "upload",
    ) -> None:
        if not _NAMESPACE.fullmatch(namespace):
            raise ValueError(f"namespace must match {_NAMESPACE.pattern}: {namespace!r}")
        if min(poll, heartbeat, timeout) <= 0:
            raise ValueError("poll, heartbeat and timeout must be positive")
        if heartbeat + timeout >= dead_after:
            raise ValueError(
                "heartbeat + timeout must be below dead_after: a cut-off holder "
                "must stop before the server frees its locks"
            )
        self._dsn = asyncpg_dsn(dsn)
        self._poll = poll
        self._heartbeat = heartbeat
        self._timeout = timeout
        self._dead_after = dead_after
        self._namespace = namespace
        self._release_channel = f"{namespace}_lock_release"
        self._freed_channel = f"{namespace}_lock_freed"
        self._retry_after = str(max(1, math.ceil(timeout)))
        self._local = MemoryLocker()
        self._connection: asyncpg.Connection | None = None
        self._connection_lock = anyio.Lock()  # one statement at a time on the connection
        self._down_until = 0.0  # after a failed connect, fail fast until then
        self._down_reason = ""
        self._held: dict[str, _Held] = {}
        self._wakers: dict[str, set[anyio.Event]] = {}
        self._heartbeat_task: asyncio.Task[None] | None = None

    @property
    def namespace(self) -> str:
        return self._namespace

    @asynccontextmanager
    async def lock(self, key: str, *, wait: float, preempt: bool = True) -> AsyncIterator[Lease]:
        if not 0 < len(key.encode()) <= _MAX_KEY:
            raise ValueError(f"not a lock key: {key[:40]!r}")
        deadline = anyio.current_time() + wait
        async with self._local.lock(key, wait=wait, preempt=preempt) as local:
            held = await self._acquire(key, deadline, preempt=preempt)
            self._held[key] = held
            local.on_release_request(held.lease.request_release)
            if self._heartbeat_task is None:
                self._heartbeat_task = asyncio.ensure_future(self._beat())
                self._heartbeat_task.add_done_callback(_report)
            try:
                yield held.lease
            finally:
                with anyio.CancelScope(shield=True):
                    del self._held[key]
                    await self._unlock(key, held)

    async def _acquire(self, key: str, deadline: float, *, preempt: bool) -> _Held:
        ident = advisory_key(self._namespace, key)
        asked_at: float | None = None
        woken = False
        wakers = self._wakers.setdefault(key, set())
        try:
            while True:
                waker = anyio.Event()  # registered before the try: a freed notice cannot slip by
                wakers.add(waker)
                try:
                    held = await self._try(ident)
                    if held is not None:
                        return held
                    now = anyio.current_time()
                    if preempt and (asked_at is None or woken or now - asked_at >= _RENOTIFY):
                        await self._notify(key)
                        asked_at = now
                    if now >= deadline:
                        raise Locked("upload is in use by another request; retry shortly")
                    with anyio.move_on_after(min(self._poll, deadline - now)):
                        await waker.wait()
                    woken = waker.is_set()
                finally:
                    wakers.discard(waker)
        finally:
            if not wakers and self._wakers.get(key) is wakers:
                del self._wakers[key]

    async def _try(self, ident: int) -> _Held | None:
        """One attempt; shielded, so that a cancelled waiter never leaves a lock it took behind.

        A connection that broke while idle (the server restarted) is replaced once; a failure on
        a fresh one, or a timeout (the server may be cut off), is ``Unavailable``.
        """
        with anyio.CancelScope(shield=True):
            async with self._connection_lock:
                for attempt in (1, 2):
                    reused = self._connection is not None
                    connection = await self._connect()
                    try:
                        token = await connection.fetchval(_TRY, ident, timeout=self._timeout)
                        break
                    except _FAILURES as error:
                        self._discard(connection, error)
                        if attempt == 2 or not reused or isinstance(error, TimeoutError):
                            raise self._unavailable(error) from error
        if token is None:
            return None
        return _Held(Lease(token=int(token)), connection, ident)

    async def _notify(self, key: str) -> None:
        with anyio.CancelScope(shield=True):
            async with self._connection_lock:
                connection = await self._connect()
                try:
                    await connection.execute(
                        "SELECT pg_notify($1, $2)",
                        self._release_channel,
                        key,
                        timeout=self._timeout,
                    )
                except _FAILURES as error:
                    self._discard(connection, error)
                    raise self._unavailable(error) from error

    async def _unlock(self, key: str, held: _Held) -> None:
        """Free ``held`` and tell waiters; a lock whose connection is gone went with it. Never
        raises for a failure of the server: the connection is dropped instead, which frees it."""
        async with self._connection_lock:
            connection = self._connection
            if connection is None or connection is not held.connection or connection.is_closed():
                return
            try:
                await connection.execute(
                    _UNLOCK, held.ident, self._freed_channel, key, timeout=self._timeout
                )
            except _FAILURES as error:
                logger.warning(
                    "cannot unlock %r (%s): dropping the lock connection", key, _reason(error)
                )
                self._discard(connection, error)

    async def _connect(self) -> asyncpg.Connection:
        """The lock connection, connected if need be (the caller holds the connection lock)."""
        connection = self._connection
        if connection is not None and not connection.is_closed():
            return connection
        if anyio.current_time() < self._down_until:
            raise Unavailable(
                f"lock service unreachable ({self._down_reason}); retry shortly",
                headers={"Retry-After": self._retry_after},
            )
        settings = keepalive_settings(self._dead_after)
        settings["application_name"] = f"{self._namespace}_locker"
        try:
            connection = await asyncpg.connect(
                self._dsn, timeout=self._timeout, server_settings=settings
            )
        except _FAILURES as error:
            self._down_until = anyio.current_time() + self._timeout
            self._down_reason = _reason(error)
            raise self._unavailable(error) from error
        try:
            with anyio.fail_after(self._timeout):
                await connection.add_listener(self._release_channel, self._on_release)
                await connection.add_listener(self._freed_channel, self._on_freed)
        except _FAILURES as error:
            connection.terminate()
            raise self._unavailable(error) from error
        connection.add_termination_listener(self._on_terminated)
        self._connection = connection
        self._down_until = 0.0
        return connection

    def _unavailable(self, error: BaseException) -> Unavailable:
        return Unavailable(
            f"lock service unreachable ({_reason(error)}); retry shortly",
            headers={"Retry-After": self._retry_after},
        )

    def _discard(self, connection: asyncpg.Connection, error: BaseException | None) -> None:
        """Forget ``connection`` and lose every lease on it; closing it frees its locks."""
        if connection is self._connection:
            self._connection = None
        lost = [
            held
            for held in self._held.values()
            if held.connection is connection and not held.lease.lost
        ]
        if lost and error is not None:
            logger.warning(
                "lock connection failed (%s): %d lease(s) lost", _reason(error), len(lost)
            )
        for held in lost:
            held.lease.mark_lost()
        if not connection.is_closed():
            connection.terminate()

    def _on_terminated(self, connection: object) -> None:
        if isinstance(connection, asyncpg.Connection) and (
            connection is self._connection
            or any(held.connection is connection for held in self._held.values())
        ):
            self._discard(connection, ConnectionError("the server closed the lock connection"))

    def _on_release(self, connection: object, pid: int, channel: str, key: object) -> None:
        held = self._held.get(str(key))
        if held is not None:
            held.lease.request_release()

    def _on_freed(self, connection: object, pid: int, channel: str, key: object) -> None:
        for waker in self._wakers.get(str(key), ()):
            waker.set()

    async def _beat(self) -> None:
        """While leases are held, check the connection every ``heartbeat`` seconds."""
        try:
            while self._held:
                await anyio.sleep(self._heartbeat)
                async with self._connection_lock:
                    connection = self._connection
                    if connection is None or not any(
                        held.connection is connection for held in self._held.values()
                    ):
                        continue  # nothing held on it: nothing to vouch for
                    try:
                        await connection.fetchval("SELECT 1", timeout=self._timeout)
                    except _FAILURES as error:
                        self._discard(connection, error)
        finally:
            self._heartbeat_task = None

    async def aclose(self) -> None:
        """Close the connection; every lock still held is freed and its lease marked lost."""
        task = self._heartbeat_task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with anyio.CancelScope(shield=True):
            async with self._connection_lock:
                connection = self._connection
                if connection is None:
                    return
                self._connection = None
                for held in self._held.values():
                    if held.connection is connection:
                        held.lease.mark_lost()
                try:
                    await connection.close(timeout=self._timeout)
                except _FAILURES as error:
                    logger.warning("cannot close the lock connection (%s)", _reason(error))
                    connection.terminate()
