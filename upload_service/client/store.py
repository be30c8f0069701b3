"""The resume store: which upload URL a file was being uploaded to, so that running the same
command again after an interruption resumes instead of starting over.

One JSON file (``$XDG_STATE_HOME/upload-service/uploads.json``, else
``~/.local/state/upload-service/``). An entry's key is the file's absolute path, size and
modification time and the endpoint: a file changed since (new size or mtime) starts a new upload.
Every change is a read-modify-write under an ``flock`` of a lock file beside it, written to a
temporary file, fsynced and renamed over the old one, so a crash or two commands running at once
never leave a torn or lost store. Entries older than ``MAX_AGE`` are dropped (the server expires
unfinished uploads after a week by default).
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MAX_AGE = 8 * 24 * 3600.0


def default_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "upload-service" / "uploads.json"


@dataclass(frozen=True, slots=True)
class FileKey:
    path: str  # absolute
    size: int
    mtime_ns: int
    endpoint: str

    @classmethod
    def of(cls, path: Path, endpoint: str) -> FileKey:
        stat = path.stat()
        return cls(str(path.resolve()), stat.st_size, stat.st_mtime_ns, endpoint)

    def text(self) -> str:
        return f"{self.endpoint} {self.size} {self.mtime_ns} {self.path}"


@dataclass(frozen=True, slots=True)
class Entry:
    """Where a file's upload stands: one upload (``url``), or ``parts`` (``--parallel``) and,
    once created, their final upload (``url``)."""

    url: str | None = None
    parts: tuple[str, ...] = ()
    updated: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["parts"] = list(self.parts)
        return data

    @classmethod
    def from_json(cls, data: object) -> Entry | None:
        if not isinstance(data, dict):
            return None
        url, parts, updated = data.get("url"), data.get("parts", []), data.get("updated", 0)
        if url is not None and not isinstance(url, str):
            return None
        if not isinstance(parts, list) or not all(isinstance(part, str) for part in parts):
            return None
        if not isinstance(updated, int | float):
            return None
        return cls(url=url, parts=tuple(parts), updated=float(updated))


class ResumeStore:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else default_path()

    def get(self, key: FileKey) -> Entry | None:
        with self._locked():
            return self._read().get(key.text())

    def put(self, key: FileKey, entry: Entry) -> None:
        self._change(lambda entries: entries.__setitem__(key.text(), entry))

    def drop(self, key: FileKey) -> None:
        self._change(lambda entries: entries.pop(key.text(), None))

    def _change(self, change: Callable[[dict[str, Entry]], object]) -> None:
        with self._locked():
            entries = self._read()
            change(entries)
            oldest = time.time() - MAX_AGE
            self._write({key: entry for key, entry in entries.items() if entry.updated >= oldest})

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict[str, Entry]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}  # unreadable: start afresh rather than refuse to upload
        if not isinstance(data, dict):
            return {}
        entries = {}
        for key, value in data.items():
            entry = Entry.from_json(value)
            if entry is not None:
                entries[key] = entry
        return entries

    def _write(self, entries: dict[str, Entry]) -> None:
        text = json.dumps({key: entry.to_json() for key, entry in entries.items()}, indent=1)
        descriptor, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".uploads.")
        try:
            with os.fdopen(descriptor, "w") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
