"""The owner's quota inside the repository's transactions: what an owner holds (``usage_of``), the
check of a new upload against it (``check_new``) and of a transition that grows it (``Growth``),
each serialised with the owner's other quota-checked transitions (``serialise``).

Crash story: the check and the write it admits are one transaction. A kill -9 before the commit
rolls both back (and lets the PostgreSQL advisory lock or the SQLite write lock go with the
connection); after it, the usage the next check reads includes the write. No process can read
the owner's usage between another's check and its write, so two uploads never both take the
last bytes of a quota.
"""

from __future__ import annotations

import dataclasses
import hashlib

from sqlalchemy import Connection, case, func, select, text, update

from upload_service.db.base import Quota, Usage
from upload_service.db.models import UploadRow
from upload_service.db.rows import in_states
from upload_service.uploads import LIVE_STATES, Upload, UploadState

# PostgreSQL: the advisory lock class (the two-int4 keyspace, apart from the upload locks'
# one-bigint keys) under which one owner's quota-checked creations are serialised.
QUOTA_LOCK_CLASS = 0x75706C64  # "upld"


def serialise(connection: Connection, owner: str | None) -> None:
    """Until this transaction ends, no other quota-checked transition of ``owner`` (in any
    process) reads the owner's usage: the check and the write are one step. On SQLite the write
    lock is taken before anything is read (a read transaction that later writes would be refused
    at once if another connection wrote meanwhile), so ``owner`` may be None there: it is looked
    up after."""
    if connection.dialect.name == "postgresql":
        if owner is not None:
            key = int.from_bytes(hashlib.sha256(owner.encode()).digest()[:4], "big", signed=True)
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:cls, :key)"),
                {"cls": QUOTA_LOCK_CLASS, "key": key},
            )
        return
    # SQLite: a write that changes nothing opens the write transaction (one writer at a time,
    # across processes) before the usage is read
    connection.execute(update(UploadRow).where(UploadRow.id == "").values(owner=None))


def check_new(connection: Connection, upload: Upload, quota: Quota) -> None:
    """``quota`` admits ``upload`` (not inserted yet) beside what its owner holds."""
    assert upload.owner is not None
    serialise(connection, upload.owner)
    quota.check_new(usage_of(connection, upload.owner), upload)


@dataclasses.dataclass(frozen=True, slots=True)
class Growth:
    """A transition that brings ``upload_id``'s share of its owner's usage, while its length is
    unknown, to ``to`` bytes (a new committed offset, a declared or an assembled length) from
    ``since`` (the committed offset it expects; None: the row's): the byte quota must admit the
    difference. An upload of known length counted its length already and grows nothing."""

    upload_id: str
    quota: Quota
    to: int
    since: int | None = None

    def check(self, connection: Connection) -> None:
        postgres = connection.dialect.name == "postgresql"
        if not postgres:
            serialise(connection, None)
        found = (
            connection.execute(
                select(UploadRow.owner, UploadRow.length, UploadRow.upload_offset).where(
                    UploadRow.id == self.upload_id
                )
            )
        ).one_or_none()
        if found is None or found.owner is None or found.length is not None:
            return  # no such upload (the transition says so), an open service's, or known
        size = self.to - (found.upload_offset if self.since is None else self.since)
        if size <= 0:
            return
        if postgres:
            serialise(connection, found.owner)
        self.quota.check(usage_of(connection, found.owner), size=size)


def growth(
    upload_id: str, quota: Quota | None, to: int, *, since: int | None = None
) -> Growth | None:
    """The quota check of a transition that may grow usage (None: no byte quota to check)."""
    if quota is None or quota.bytes is None:
        return None
    return Growth(upload_id, quota, to, since)


def usage_of(connection: Connection, owner: str) -> Usage:
    unfinished = func.count().filter(UploadRow.state == UploadState.RECEIVING.value)
    stored = func.coalesce(
        func.sum(
            case((UploadRow.length.is_(None), UploadRow.upload_offset), else_=UploadRow.length)
        ),
        0,
    )
    result = connection.execute(
        select(unfinished, stored).where(UploadRow.owner == owner, in_states(LIVE_STATES))
    )
    count, total = result.one()
    return Usage(unfinished=int(count), bytes=int(total))
