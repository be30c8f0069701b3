"""Peer: the ``tuspyserver`` FastAPI router, mounted as its README shows, on uvicorn with uvloop +
httptools. Copied into the benchmark's cache directory and run there by the peer's own venv.

    python tuspyserver_app.py PORT DATA_DIR
"""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI
from tuspyserver import create_tus_router  # type: ignore[import-not-found, unused-ignore]


def build(data_dir: str) -> FastAPI:
    app = FastAPI()
    app.include_router(create_tus_router(prefix="files", files_dir=data_dir))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:  # the trivial GET of the latency probe
        return {"status": "ok"}

    return app


if __name__ == "__main__":
    uvicorn.run(
        build(sys.argv[2]),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        log_level="warning",
    )
