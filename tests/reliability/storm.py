"""Kill storms: raw tus clients upload while the server is killed with SIGKILL and restarted.

Several clients (one thread each) upload again and again, each with its own upload at a time:
plain uploads, and now and then two partial uploads and a final concatenation of them. Each PATCHes
a piece of random size from the offset that HEAD reports, paced so that a body takes a while, and
notes every acknowledgement (a 204's ``Upload-Offset``). Meanwhile a killer sends the server SIGKILL
at random moments (mid-body, between requests, right after an upload's last byte, while it is
verified, right after a final is created, while it is assembled) and starts it again on the same
data, database, bucket and port, until it has killed it ``kills`` times. Then the clients finish
what they have started.

What must hold, checked throughout and at the end (``Storm.violations``):
- HEAD never reports less than an offset already acknowledged, nor more than the length;
- no request answers 5xx other than 503 (a service that is starting);
- every finished upload (and every final) reaches ``ready`` and downloads byte-identical;
- no upload is lost (no 404 for an upload the client made);
- once every upload is deleted and clean-up has run (with no grace for orphans), no stored bytes
  are left: no file under ``files/``, no object or multipart upload under the S3 prefix.

``tests/e2e/test_reliability.py`` runs a small storm per configuration; ``scripts/reliability``
runs long ones (``--kills 200``).
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.e2e.support import KiB, MiB, ServerProcess, Servers, cli_command

TUS = {"Tus-Resumable": "1.0.0"}
OFFSET_CT = "application/offset+octet-stream"
TIMEOUT = httpx.Timeout(30.0, connect=5.0)
PACE_PIECE = 64 * KiB
RETRY = 0.05  # seconds between attempts while the server is away
READY_WITHIN = 120.0  # seconds a finished upload may take to become ready (restarts included)
# Checkpoints every quarter second: kills land before and after commits inside one PATCH.
STORM_ENV = {"UPLOAD_CHECKPOINT_SECONDS": "0.25"}


class Down(Exception):
    """The server did not answer: it was killed, or is starting again."""


class Abandon(Exception):
    """The client gives up on its current upload (a violation was recorded)."""


@dataclass(frozen=True, slots=True)
class Target:
    """One configuration: the servers' environment, and where their stored bytes live."""

    name: str
    env: Mapping[str, str]
    stored: Callable[[Path], list[str]]  # what is stored, given the server's data directory


def local_files(data_dir: Path) -> list[str]:
    files = data_dir / "files"
    return sorted(path.name for path in files.iterdir()) if files.exists() else []


@dataclass
class Figures:
    kills: int = 0
    patches: int = 0  # PATCH requests sent
    acknowledged: int = 0  # ... of them answered 204
    uploads: int = 0  # uploads (finals included) verified byte-identical after download
    finals: int = 0  # ... of them final concatenations
    bytes: int = 0  # bytes of those verified uploads
    answers: dict[str, int] = field(default_factory=dict)  # every status seen, by request kind
    violations: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {
            "kills": self.kills,
            "patches": self.patches,
            "acknowledged": self.acknowledged,
            "uploads": self.uploads,
            "finals": self.finals,
            "bytes": self.bytes,
            "violations": len(self.violations),
        }


@dataclass(frozen=True, slots=True)
class Piece:
    """A stretch of the source file: what an upload holds."""

    start: int
    size: int


class Storm:
    def __init__(
        self,
        servers: Servers,
        target: Target,
        source: Path,
        *,
        kills: int,
        clients: int = 3,
        seed: int | None = None,
        max_upload: int = 6 * MiB,
        rate: float = 24 * MiB,
    ) -> None:
        self._servers = servers
        self._target = target
        self._source = source
        self._source_size = source.stat().st_size
        self._kills = kills
        self._clients = clients
        self.seed = seed if seed is not None else random.randrange(2**32)
        self._max_upload = max_upload
        self._rate = rate  # bytes/s of each client's bodies
        self.figures = Figures()
        self._lock = threading.Lock()
        self._over = threading.Event()  # the killer is done: clients finish and stop
        self._completed = threading.Event()  # an upload's last byte was just acknowledged
        self._assembling = threading.Event()  # a final was just created
        self.server: ServerProcess | None = None

    # -- the storm -----------------------------------------------------------------------------

    def run(self) -> Figures:
        self.server = self._servers.start(env={**STORM_ENV, **self._target.env})
        self.base_url = self.server.base_url
        threads = [
            threading.Thread(target=self._client, args=(i,), name=f"storm-client-{i}", daemon=True)
            for i in range(self._clients)
        ]
        for thread in threads:
            thread.start()
        try:
            self._killer(random.Random(self.seed))
        finally:
            self._over.set()
            for thread in threads:
                thread.join(timeout=READY_WITHIN + 60)
                if thread.is_alive():
                    self._violation(f"{thread.name} did not finish its upload")
        self._check_nothing_left()
        return self.figures

    def _killer(self, rng: random.Random) -> None:
        while self.figures.kills < self._kills:
            moment = rng.choice(("timer", "timer", "timer", "completion", "assembly"))
            if moment == "timer":
                time.sleep(rng.uniform(0.1, 1.2))
            else:
                event = self._completed if moment == "completion" else self._assembling
                event.clear()
                event.wait(timeout=2.0)
                time.sleep(rng.uniform(0.0, 0.05))  # verification and assembly are under way
            self._restart()
            self.figures.kills += 1

    def _restart(self) -> None:
        assert self.server is not None
        self.server.kill9()
        self.server = self._servers.restart(self.server, env={**STORM_ENV, **self._target.env})

    # -- one client ----------------------------------------------------------------------------

    def _client(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index + 1)
        with httpx.Client(timeout=TIMEOUT) as http:
            while not self._over.is_set():
                try:
                    if rng.random() < 0.25:
                        self._final(http, rng)
                    else:
                        self._plain(http, rng)
                except Abandon:
                    continue
                except Exception as exc:  # a bug of the storm itself: say so, stop this client
                    self._violation(f"client {index} crashed: {exc!r}")
                    return

    def _piece(self, rng: random.Random) -> Piece:
        size = rng.randint(1, self._max_upload)
        return Piece(rng.randrange(0, self._source_size - size), size)

    def _plain(self, http: httpx.Client, rng: random.Random) -> None:
        piece = self._piece(rng)
        url = self._create(http, {"Upload-Length": str(piece.size)})
        self._send(http, rng, url, piece)
        self._completed.set()
        self._check_ready(http, url, self._sha256(piece), piece.size, final=False)

    def _final(self, http: httpx.Client, rng: random.Random) -> None:
        parts = (self._piece(rng), self._piece(rng))
        urls = []
        for part in parts:
            headers = {"Upload-Length": str(part.size), "Upload-Concat": "partial"}
            url = self._create(http, headers)
            self._send(http, rng, url, part)
            urls.append(url)
        paths = " ".join(httpx.URL(url).path for url in urls)
        final = self._create(http, {"Upload-Concat": f"final;{paths}"})
        self._assembling.set()
        digest = hashlib.sha256()
        for part in parts:
            for chunk in self._read(part):
                digest.update(chunk)
        size = sum(part.size for part in parts)
        self._check_ready(http, final, digest.hexdigest(), size, final=True)

    # -- requests, each retried while the server is away ---------------------------------------

    def _request(
        self, http: httpx.Client, kind: str, method: str, url: str, **kwargs: object
    ) -> httpx.Response:
        """One request; ``Down`` when the server did not answer, or answered 503 (starting)."""
        try:
            response = http.request(method, url, **kwargs)  # type: ignore[arg-type]
        except httpx.TransportError as exc:
            raise Down(str(exc)) from exc
        self._count(kind, response.status_code)
        if response.status_code == 503:
            raise Down("503")
        if response.status_code >= 500:
            self._violation(f"{kind} {url} answered {response.status_code}: {response.text[:200]}")
            raise Abandon
        return response

    def _retried(
        self, http: httpx.Client, kind: str, method: str, url: str, **kwargs: object
    ) -> httpx.Response:
        deadline = time.monotonic() + READY_WITHIN
        while True:
            try:
                return self._request(http, kind, method, url, **kwargs)
            except Down:
                if time.monotonic() > deadline:
                    self._violation(f"{kind} {url}: no answer within {READY_WITHIN:.0f} s")
                    raise Abandon from None
                time.sleep(RETRY)

    def _create(self, http: httpx.Client, headers: Mapping[str, str]) -> str:
        # A creation whose answer was lost may have made an upload all the same: it is an upload
        # like any other, found and deleted at the end.
        response = self._retried(
            http, "POST", "POST", f"{self.base_url}/files/", headers={**TUS, **headers}
        )
        if response.status_code != 201:
            self._violation(f"POST answered {response.status_code}: {response.text[:200]}")
            raise Abandon
        return str(httpx.URL(self.base_url).join(response.headers["Location"]))

    def _head(self, http: httpx.Client, url: str, length: int) -> int:
        response = self._retried(http, "HEAD", "HEAD", url, headers=TUS)
        if response.status_code != 200:
            self._violation(f"HEAD {url} answered {response.status_code}: the upload is lost")
            raise Abandon
        offset = int(response.headers["Upload-Offset"])
        if offset > length:
            self._violation(f"HEAD {url} reported {offset}, past the length {length}")
            raise Abandon
        return offset

    def _send(self, http: httpx.Client, rng: random.Random, url: str, piece: Piece) -> None:
        acknowledged = 0
        while True:
            offset = self._head(http, url, piece.size)
            if offset < acknowledged:
                self._violation(
                    f"HEAD {url} reported {offset} after {acknowledged} was acknowledged"
                )
                raise Abandon
            if offset == piece.size:
                return
            count = min(piece.size - offset, rng.randint(1, 4 * MiB))
            headers = {
                **TUS,
                "Upload-Offset": str(offset),
                "Content-Type": OFFSET_CT,
                "Content-Length": str(count),
            }
            body = self._paced(Piece(piece.start + offset, count))
            with self._lock:
                self.figures.patches += 1
            try:
                response = self._request(http, "PATCH", "PATCH", url, headers=headers, content=body)
            except Down:
                time.sleep(RETRY)
                continue
            if response.status_code == 204:
                reported = int(response.headers["Upload-Offset"])
                if reported != offset + count:
                    self._violation(f"PATCH {url} acknowledged {reported}, not {offset + count}")
                    raise Abandon
                acknowledged = max(acknowledged, reported)
                with self._lock:
                    self.figures.acknowledged += 1
            elif response.status_code in (409, 423):
                # the offset moved under us (a cut request committed after our HEAD), or the cut
                # request still holds the lock: ask again
                time.sleep(RETRY)
            else:
                self._violation(
                    f"PATCH {url} answered {response.status_code}: {response.text[:200]}"
                )
                raise Abandon

    def _check_ready(
        self, http: httpx.Client, url: str, sha256: str, size: int, *, final: bool
    ) -> None:
        upload_id = httpx.URL(url).path.rsplit("/", 1)[-1]
        status_url = f"{self.base_url}/api/uploads/{upload_id}"
        deadline = time.monotonic() + READY_WITHIN
        while True:
            state = self._retried(http, "status", "GET", status_url).json().get("state")
            if state == "ready":
                break
            if state != "verifying" and not (final and state == "receiving"):
                self._violation(f"{url} became {state!r}, not ready")
                return
            if time.monotonic() > deadline:
                self._violation(f"{url} still {state!r} after {READY_WITHIN:.0f} s")
                return
            time.sleep(RETRY)
        while True:
            try:
                digest, got = self._download(http, url)
                break
            except Down:
                time.sleep(RETRY)
        if (digest, got) != (sha256, size):
            self._violation(f"{url} downloads {got} bytes, sha256 {digest}; sent {size}, {sha256}")
            return
        with self._lock:
            self.figures.uploads += 1
            self.figures.finals += final
            self.figures.bytes += size

    def _download(self, http: httpx.Client, url: str) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = 0
        try:
            with http.stream("GET", url) as response:
                self._count("GET", response.status_code)
                if response.status_code == 503:
                    raise Down("503")
                if response.status_code != 200:
                    self._violation(f"GET {url} of a ready upload answered {response.status_code}")
                    raise Abandon
                for chunk in response.iter_bytes():
                    digest.update(chunk)
                    size += len(chunk)
        except httpx.TransportError as exc:
            raise Down(str(exc)) from exc
        return digest.hexdigest(), size

    # -- the end: nothing left behind ----------------------------------------------------------

    def _check_nothing_left(self) -> None:
        """Delete every upload the service lists, run clean-up with no grace for orphans (the
        bytes that a creation killed before its row's insert left), and look at the storage."""
        with httpx.Client(timeout=TIMEOUT) as http:
            ids = self._listed(http)
            for upload_id in ids:
                url = f"{self.base_url}/files/{upload_id}"
                response = self._retried(http, "DELETE", "DELETE", url, headers=TUS)
                if response.status_code not in (204, 404, 410):
                    self._violation(f"DELETE {url} answered {response.status_code}")
        assert self.server is not None
        self.server.stop()
        cleanup = subprocess.run(
            cli_command("cleanup"),
            env={**self.server.environment, "UPLOAD_ORPHAN_GRACE": "0"},
            cwd=self.server.data_dir.parent,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if cleanup.returncode != 0:
            self._violation(f"clean-up failed: {cleanup.stdout[-500:]} {cleanup.stderr[-500:]}")
        left = self._target.stored(self.server.data_dir)
        if left:
            self._violation(f"{len(left)} stored after clean-up: {left[:5]}")

    def _listed(self, http: httpx.Client) -> list[str]:
        ids: list[str] = []
        cursor: str | None = None
        while True:
            params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
            page = self._retried(
                http, "list", "GET", f"{self.base_url}/api/uploads", params=params
            ).json()
            ids.extend(upload["id"] for upload in page["uploads"])
            cursor = page["next_cursor"]
            if cursor is None:
                return ids

    # -- helpers -------------------------------------------------------------------------------

    def _read(self, piece: Piece) -> Iterator[bytes]:
        with self._source.open("rb") as stream:
            stream.seek(piece.start)
            remaining = piece.size
            while remaining:
                chunk = stream.read(min(MiB, remaining))
                remaining -= len(chunk)
                yield chunk

    def _sha256(self, piece: Piece) -> str:
        digest = hashlib.sha256()
        for chunk in self._read(piece):
            digest.update(chunk)
        return digest.hexdigest()

    def _paced(self, piece: Piece) -> Iterator[bytes]:
        """The piece's bytes at the storm's rate: a body takes long enough to be cut."""
        started = time.monotonic()
        sent = 0
        with self._source.open("rb") as stream:
            stream.seek(piece.start)
            while sent < piece.size:
                chunk = stream.read(min(PACE_PIECE, piece.size - sent))
                sent += len(chunk)
                yield chunk
                ahead = sent / self._rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)

    def _count(self, kind: str, status: int) -> None:
        with self._lock:
            key = f"{kind} {status}"
            self.figures.answers[key] = self.figures.answers.get(key, 0) + 1

    def _violation(self, text: str) -> None:
        with self._lock:
            self.figures.violations.append(text)
