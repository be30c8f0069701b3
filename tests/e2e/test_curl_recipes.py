"""The curl recipes of the README and docs/, run as written with real curl against a real server,
right after an interruption (the report of issue 11: a HEAD typed at once answered an offset the broken PATCH
was still moving, and the PATCH that followed got 409)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.e2e.support import (
    OFFSET_CT,
    TUS,
    MiB,
    RawPatch,
    Servers,
    Source,
    create_upload,
    download_sha256,
    head_offset,
    require_tool,
    wait_until_ready,
)
from tests.e2e.test_ietf_draft import cut_creation

pytestmark = [pytest.mark.e2e, pytest.mark.solo]

ROOT = Path(__file__).parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def readme_block(marker: str) -> str:
    """The ```sh block of the README or a docs/ page that contains ``marker``."""
    blocks = [
        block
        for page in PAGES
        for block in re.findall(r"```sh\n(.*?)```", page.read_text(), re.DOTALL)
    ]
    found = [block for block in blocks if marker in block]
    assert len(found) == 1, f"one README or docs/ block with {marker!r}, found {len(found)}"
    block: str = found[0]
    return block


def resume_lines() -> str:
    """The README's resume recipe: the lines after its '# interrupted?' comment, up to the
    next comment."""
    block = readme_block("# interrupted?")
    lines = block.split("# interrupted?", 1)[1].splitlines()[1:]
    kept = []
    for line in lines:
        if line.startswith("#"):
            break
        kept.append(line)
    return "\n".join(kept)


def run_recipe(script: str, url: str, file: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run README lines with its placeholders filled in, as a user would paste them."""
    base = url.rsplit("/files/", 1)[0]
    upload_id = url.rsplit("/", 1)[-1]
    text = script.replace("http://127.0.0.1:8080", base).replace("<id>", upload_id)
    text = text.replace("holiday.mp4", str(file))
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", text],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def interrupted_curl(url: str, source: Source) -> None:
    """``timeout 1 curl ...`` as the report had it: a PATCH of the whole file, paced so that it is
    cut off midway (SIGTERM; the kernel closes the connection)."""
    subprocess.run(
        ["timeout", "1", require_tool("curl"), "-s", "--limit-rate", "40M", "-X", "PATCH",
         "-T", str(source.path), "-H", "Tus-Resumable: 1.0.0", "-H", "Upload-Offset: 0",
         "-H", f"Content-Type: {OFFSET_CT}", url],
        check=False,
        capture_output=True,
    )  # fmt: skip


def test_head_right_after_an_interruption_gives_an_offset_the_next_patch_may_use(
    servers: Servers, http: httpx.Client, source: Source
) -> None:
    server = servers.start()
    for interrupt in ("curl", "socket"):
        url = create_upload(http, server.base_url, source.size)
        if interrupt == "curl":
            interrupted_curl(url, source)
        else:
            # a paced client (a real network's pace) that closes after 60 MiB, mid-body
            RawPatch(url, source, 0, limit=60 * MiB, rate=40e6).run()
        offset = head_offset(http, url)  # at once
        assert 0 < offset < source.size
        with source.path.open("rb") as stream:
            stream.seek(offset)
            response = http.patch(
                url,
                content=iter(lambda: stream.read(MiB), b""),
                headers={**TUS, "Upload-Offset": str(offset), "Content-Type": OFFSET_CT},
            )
        assert response.status_code == 204, (interrupt, response.text)
        assert int(response.headers["Upload-Offset"]) == source.size
        wait_until_ready(http, url)
        assert download_sha256(http, url) == (source.sha256, source.size)


def interrupted_upload(servers: Servers, http: httpx.Client, source: Source) -> str:
    """A new server, and an upload of ``source`` on it that curl broke off: its URL."""
    require_tool("curl")
    server = servers.start()
    url = create_upload(http, server.base_url, source.size)
    interrupted_curl(url, source)
    return url


def test_the_readme_resume_recipe_right_after_an_interruption(
    servers: Servers, http: httpx.Client, source: Source, tmp_path: Path
) -> None:
    url = interrupted_upload(servers, http, source)
    assert head_offset(http, url) < source.size
    result = run_recipe(resume_lines(), url, source.path, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "HTTP/1.1 204" in result.stdout, result.stdout
    assert head_offset(http, url) == source.size
    wait_until_ready(http, url)
    assert download_sha256(http, url) == (source.sha256, source.size)


def test_the_readme_resume_loop_finishes_an_interrupted_upload(
    servers: Servers, http: httpx.Client, source: Source, tmp_path: Path
) -> None:
    url = interrupted_upload(servers, http, source)
    script = readme_block("resume() {")
    result = run_recipe(script, url, source.path, tmp_path)
    assert result.returncode == 0, result.stderr
    wait_until_ready(http, url)
    assert download_sha256(http, url) == (source.sha256, source.size)


# -- the IETF draft's recipes (docs/ietf-draft.md) ----------------------------------------------


def test_the_draft_recipes_create_resume_and_cancel(
    servers: Servers, http: httpx.Client, source: Source, tmp_path: Path
) -> None:
    require_tool("curl")
    server = servers.start()
    base = server.base_url

    created = run_recipe(readme_block("# draft: create"), f"{base}/files/x", source.path, tmp_path)
    assert created.returncode == 0, created.stderr
    assert "HTTP/1.1 104 Upload Resumption Supported" in created.stdout, created.stdout[:2000]
    assert "HTTP/1.1 201" in created.stdout, created.stdout[:2000]
    location = re.findall(r"(?im)^location: (\S+)", created.stdout)[-1]
    assert download_sha256(http, location) == (source.sha256, source.size)

    url = cut_creation(base, source, 8)
    resumed = run_recipe(readme_block("# draft: resume"), url, source.path, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "HTTP/1.1 204" in resumed.stdout, resumed.stdout
    assert "upload-complete: ?1" in resumed.stdout.lower(), resumed.stdout
    assert download_sha256(http, url) == (source.sha256, source.size)

    cancelled = run_recipe(readme_block("# draft: cancel"), url, source.path, tmp_path)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "HTTP/1.1 204" in cancelled.stdout, cancelled.stdout
    assert "upload-limit: min-size=0" in cancelled.stdout.lower(), cancelled.stdout
    assert http.head(url, headers={"Upload-Draft-Interop-Version": "8"}).status_code in (404, 410)
