"""Floor: a raw socket sink, one thread per connection, that reads and discards HTTP bodies.

It parses just the request head (``Content-Length`` bodies only; no chunked encoding), answers
``Expect: 100-continue``, and reads the body with ``recv_into`` into one reused buffer: the least
work Python can do per byte received. It speaks the same made-up tus as ``asgi_floor.py``.

    python bench/apps/socket_floor.py PORT
"""

from __future__ import annotations

import itertools
import socket
import sys
import threading

BUFFER = 1024 * 1024
HEAD_LIMIT = 64 * 1024
_ids = itertools.count(1)
_ids_lock = threading.Lock()


def _respond(conn: socket.socket, status: str, headers: dict[str, str]) -> None:
    lines = [f"HTTP/1.1 {status}", "Tus-Resumable: 1.0.0", "Content-Length: 0"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


def _serve(conn: socket.socket) -> None:
    try:
        _exchange(conn)
    except OSError:  # the client went away: nothing to do but forget the connection
        conn.close()


def _exchange(conn: socket.socket) -> None:
    sink = bytearray(BUFFER)
    view = memoryview(sink)
    pending = b""
    with conn:
        while True:
            while b"\r\n\r\n" not in pending:
                if len(pending) > HEAD_LIMIT:
                    return
                piece = conn.recv(65536)
                if not piece:
                    return
                pending += piece
            head, _, rest = pending.partition(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method = request_line.split(" ", 1)[0]
            headers = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if headers.get("expect", "").lower() == "100-continue" and len(rest) < length:
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            pending = rest[length:]
            remaining = length - min(len(rest), length)
            while remaining > 0:
                got = conn.recv_into(view, min(remaining, BUFFER))
                if got == 0:
                    return
                remaining -= got
            if method == "POST":
                with _ids_lock:
                    upload = next(_ids)
                _respond(
                    conn, "201 Created", {"Location": f"/files/{upload}", "Upload-Offset": "0"}
                )
            elif method == "PATCH":
                offset = int(headers.get("upload-offset", "0")) + length
                _respond(conn, "204 No Content", {"Upload-Offset": str(offset)})
            elif method == "OPTIONS":
                _respond(
                    conn, "204 No Content", {"Tus-Version": "1.0.0", "Tus-Extension": "creation"}
                )
            else:
                _respond(conn, "200 OK", {})
            if headers.get("connection", "").lower() == "close":
                return


def main(port: int) -> None:
    with socket.create_server(("127.0.0.1", port), backlog=256) as server:
        while True:
            conn, _ = server.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=_serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main(int(sys.argv[1]))
