"""A TCP proxy that tests cut and restore, to play an unreachable server (a database or an S3
endpoint) under a running service."""

from __future__ import annotations

import asyncio

KiB = 1024


class CuttableProxy:
    """A TCP proxy on 127.0.0.1 to ``target``: ``cut`` drops every connection and refuses new
    ones (a restarted or unreachable server), ``restore`` listens again on the same port."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self._target)
        except OSError:
            client_w.transport.abort()
            return
        self._links.update((client_w, server_w))
        for reader, writer in ((client_r, server_w), (server_r, client_w)):
            task = asyncio.ensure_future(self._pump(reader, writer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Relay one direction. At the end of what its side sent, what is still buffered is
        flushed before the other side is closed (``close``: an ``abort`` here dropped the last
        bytes of a response whose server closed at once, and a download came up short); on an
        error, or when cut, the link is aborted."""
        try:
            while data := await reader.read(64 * KiB):
                writer.write(data)
                await writer.drain()
        except OSError:
            writer.transport.abort()
        else:
            writer.close()
        finally:
            self._links.discard(writer)

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()

    async def restore(self) -> None:
        await self.start()

    async def aclose(self) -> None:
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
