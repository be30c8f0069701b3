"""HTTP tests: GET /files/{id} (download, Range, Content-Disposition, Content-Type, the headers
that keep user content from running as a page) and CORS. Caching and conditional requests:
test_tus_download_cache.py."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from urllib.parse import quote, unquote

import httpx
import pytest

from tests.conftest import TUS, make_settings
from tests.tus_http_helpers import create, patch, reason, serve, snapshot
from upload_service.services import Services

pytestmark = pytest.mark.anyio  # see test_tus_creation.py

DATA = b"0123456789"


def b64(value: str | bytes) -> str:
    raw = value.encode() if isinstance(value, str) else value
    return base64.b64encode(raw).decode()


_DISPOSITION = re.compile(
    r'(attachment|inline); filename="([^"\\]*)"; filename\*=UTF-8' "''" r"([!-~]+)"
)


def disposition_params(header: str) -> dict[str, str]:
    """The kind and the two names of ``attachment; filename="..."; filename*=UTF-8''...`` (or
    ``inline; ...``), format checked; ``filename*`` is decoded."""
    match = _DISPOSITION.fullmatch(header)
    assert match is not None, header
    kind, ascii_name, encoded = match.groups()
    assert encoded == quote(unquote(encoded, errors="strict"), safe="")
    return {"kind": kind, "filename": ascii_name, "filename*": unquote(encoded, errors="strict")}


async def finished(
    client: httpx.AsyncClient, data: bytes = DATA, metadata: str | None = None
) -> str:
    return await create(client, len(data), metadata=metadata, body=data)


# -- whole file ---------------------------------------------------------------------------------


async def test_download_whole_file(client: httpx.AsyncClient) -> None:
    upload_id = await finished(client)
    response = await client.get(f"/files/{upload_id}")
    assert response.status_code == 200
    assert response.content == DATA
    assert response.headers["Content-Length"] == "10"
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert "Content-Range" not in response.headers
    params = disposition_params(response.headers["Content-Disposition"])
    assert params["filename"] == upload_id


async def test_download_needs_no_tus_resumable(client: httpx.AsyncClient) -> None:
    upload_id = await finished(client)
    response = await client.get(f"/files/{upload_id}", headers={"Tus-Resumable": "0.2.2"})
    assert response.status_code == 200
    assert response.content == DATA


async def test_download_larger_than_one_read_chunk(client: httpx.AsyncClient) -> None:
    data = bytes(range(256)) * 2048 + b"tail"  # 512 KiB + 4: several store reads
    upload_id = await finished(client, data)
    response = await client.get(f"/files/{upload_id}")
    assert response.content == data
    ranged = await client.get(f"/files/{upload_id}", headers={"Range": "bytes=262140-262147"})
    assert ranged.status_code == 206
    assert ranged.content == data[262140:262148]


async def test_unfinished_upload_cannot_be_downloaded(
    client: httpx.AsyncClient, services: Services
) -> None:
    upload_id = await create(client, 10, body=b"abc")
    before = await snapshot(services, upload_id)
    response = await client.get(f"/files/{upload_id}")
    assert response.status_code == 409
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert reason(response) == "upload is not finished (3 of 10 bytes)"
    assert await snapshot(services, upload_id) == before


async def test_download_of_unknown_upload_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/files/" + "0" * 32)
    assert response.status_code == 404
    assert reason(response) == "no such upload"


# -- Range --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=5-", 5, 9),
        ("bytes=-3", 7, 9),
        ("bytes=2-4", 2, 4),
        ("bytes=8-100", 8, 9),
        ("bytes=-100", 0, 9),
        ("bytes=9-9", 9, 9),
        ("Bytes = 1-2", 1, 2),
    ],
)
async def test_single_range_is_206(
    client: httpx.AsyncClient, header: str, start: int, end: int
) -> None:
    upload_id = await finished(client)
    response = await client.get(f"/files/{upload_id}", headers={"Range": header})
    assert response.status_code == 206
    assert response.content == DATA[start : end + 1]
    assert response.headers["Content-Range"] == f"bytes {start}-{end}/10"
    assert response.headers["Content-Length"] == str(end - start + 1)
    assert response.headers["Accept-Ranges"] == "bytes"


@pytest.mark.parametrize("header", ["bytes=10-", "bytes=10-20", "bytes=100-200", "bytes=-0"])
async def test_unsatisfiable_range_is_416(client: httpx.AsyncClient, header: str) -> None:
    upload_id = await finished(client)
    response = await client.get(f"/files/{upload_id}", headers={"Range": header})
    assert response.status_code == 416
    assert response.headers["Content-Range"] == "bytes */10"
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert reason(response) == f"Range {header!r} lies outside the 10 bytes"


async def test_any_range_of_an_empty_file_is_416(client: httpx.AsyncClient) -> None:
    upload_id = await finished(client, b"")
    response = await client.get(f"/files/{upload_id}", headers={"Range": "bytes=0-0"})
    assert response.status_code == 416
    assert response.headers["Content-Range"] == "bytes */0"


@pytest.mark.parametrize(
    "header",
    ["bytes=0-1,3-4", "bytes=abc", "bytes=5-2", "items=0-1", "bytes=", "bytes=-", "garbage", ""],
)
async def test_multi_or_garbage_range_sends_the_whole_file(
    client: httpx.AsyncClient, header: str
) -> None:
    upload_id = await finished(client)
    response = await client.get(f"/files/{upload_id}", headers={"Range": header})
    assert response.status_code == 200
    assert response.content == DATA
    assert response.headers["Content-Length"] == "10"
    assert "Content-Range" not in response.headers


# -- Content-Disposition and Content-Type -------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "ascii_name", "utf8_name"),
    [
        ("report.pdf", "report.pdf", "report.pdf"),
        ("../../x", "x", "x"),
        ("..\\..\\windows\\system32", "system32", "system32"),
        ("/etc/passwd", "passwd", "passwd"),
        ('a"b.txt', "a_b.txt", "a_b.txt"),
        ("evil\r\nSet-Cookie: a=b", "evil__Set-Cookie_ a=b", "evil__Set-Cookie_ a=b"),
        ("semi;colon%20.txt", "semi_colon_20.txt", "semi_colon_20.txt"),
        ("vidéo 🎬.mp4", "vid_o _.mp4", "vidéo 🎬.mp4"),
        ("vide\u0301o.mp4", "vid_o.mp4", "vidéo.mp4"),  # decomposed é is normalised (NFC)
    ],
)
async def test_content_disposition_is_built_safely(
    client: httpx.AsyncClient, filename: str, ascii_name: str, utf8_name: str
) -> None:
    upload_id = await finished(client, metadata=f"filename {b64(filename)}")
    response = await client.get(f"/files/{upload_id}")
    assert response.status_code == 200
    header = response.headers["Content-Disposition"]
    assert header.isascii()
    assert "\r" not in header
    assert "\n" not in header
    assert header.startswith("attachment; ")
    params = disposition_params(header)
    assert params["filename"] == ascii_name
    assert params["filename*"] == utf8_name
    assert set(response.headers.keys()) & {"set-cookie"} == set()


async def test_non_ascii_filename_is_percent_encoded(client: httpx.AsyncClient) -> None:
    upload_id = await finished(client, metadata=f"filename {b64('vidéo 🎬.mp4')}")
    response = await client.get(f"/files/{upload_id}")
    assert response.headers["Content-Disposition"] == (
        "attachment; filename=\"vid_o _.mp4\"; filename*=UTF-8''vid%C3%A9o%20%F0%9F%8E%AC.mp4"
    )


@pytest.mark.parametrize("filename", ["..", ".", "", "/", "...", "../"])
async def test_empty_or_dot_filename_falls_back_to_the_id(
    client: httpx.AsyncClient, filename: str
) -> None:
    upload_id = await finished(client, metadata=f"filename {b64(filename)}")
    response = await client.get(f"/files/{upload_id}")
    params = disposition_params(response.headers["Content-Disposition"])
    assert params["filename"] == upload_id


async def test_undecodable_filename_is_replaced(client: httpx.AsyncClient) -> None:
    encoded = b64(b"a\xff.bin")
    upload_id = await finished(client, metadata=f"filename {encoded}")
    response = await client.get(f"/files/{upload_id}")
    params = disposition_params(response.headers["Content-Disposition"])
    assert params["filename"] == "a_.bin"
    assert params["filename*"] == "a\ufffd.bin"
    assert response.headers["Content-Disposition"].endswith("UTF-8''a%EF%BF%BD.bin")


async def test_very_long_filename_is_truncated(client: httpx.AsyncClient) -> None:
    upload_id = await finished(client, metadata=f"filename {b64('a' * 1000 + '.txt')}")
    response = await client.get(f"/files/{upload_id}")
    params = disposition_params(response.headers["Content-Disposition"])
    assert params["filename"] == "a" * 200


@pytest.mark.parametrize(
    ("filetype", "expected"),
    [
        ("video/mp4", "video/mp4"),
        ("application/vnd.api+json", "application/vnd.api+json"),
        ("image/svg+xml", "application/octet-stream"),  # an active type: it runs script
        ("not a type", "application/octet-stream"),
        ("video", "application/octet-stream"),
        ("text/html\r\nX-Evil: 1", "application/octet-stream"),
        ("/mp4", "application/octet-stream"),
        ("video/mp4, text/html", "application/octet-stream"),
    ],
)
async def test_content_type_comes_from_valid_filetype_only(
    client: httpx.AsyncClient, filetype: str, expected: str
) -> None:
    upload_id = await finished(client, metadata=f"filetype {b64(filetype)}")
    response = await client.get(f"/files/{upload_id}")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == expected
    assert "X-Evil" not in response.headers


async def test_filetype_without_value_is_octet_stream(client: httpx.AsyncClient) -> None:
    upload_id = await finished(client, metadata="filetype")
    response = await client.get(f"/files/{upload_id}")
    assert response.headers["Content-Type"] == "application/octet-stream"


@pytest.mark.parametrize(
    "filetype",
    [
        "text/html",
        "Text/HTML",
        "application/xhtml+xml",
        "image/svg+xml",
        "application/javascript",
        "text/javascript",
        "application/ecmascript",
        "text/xml",
        "application/xml",
        "application/rss+xml",
        "text/xsl",
        "multipart/x-mixed-replace",
    ],
)
async def test_active_types_are_served_as_an_octet_stream_attachment(
    client: httpx.AsyncClient, filetype: str
) -> None:
    data = b"<script>alert(document.domain)</script>"
    upload_id = await finished(
        client, data, metadata=f"filetype {b64(filetype)},filename {b64('x.html')}"
    )
    response = await client.get(f"/files/{upload_id}")
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert disposition_params(response.headers["Content-Disposition"])["kind"] == "attachment"


@pytest.mark.parametrize(
    "filetype", ["video/mp4", "video/webm", "audio/mpeg", "image/png", "image/jpeg", "Video/MP4"]
)
async def test_audio_video_and_raster_images_are_inline(
    client: httpx.AsyncClient, filetype: str
) -> None:
    upload_id = await finished(client, metadata=f"filetype {b64(filetype)},filename {b64('clip')}")
    response = await client.get(f"/files/{upload_id}")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == filetype.lower()
    assert response.headers["Content-Disposition"] == (
        "inline; filename=\"clip\"; filename*=UTF-8''clip"
    )
    # a bare sandbox: default-src 'none' would stop the browser's own media page from loading it
    assert response.headers["Content-Security-Policy"] == "sandbox"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    "filetype", ["application/pdf", "text/plain", "application/zip", "application/json"]
)
async def test_other_valid_types_are_kept_but_attachments(
    client: httpx.AsyncClient, filetype: str
) -> None:
    upload_id = await finished(client, metadata=f"filetype {b64(filetype)}")
    response = await client.get(f"/files/{upload_id}")
    assert response.headers["Content-Type"] == filetype
    assert disposition_params(response.headers["Content-Disposition"])["kind"] == "attachment"
    assert response.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"


async def test_inline_video_keeps_a_unicode_filename_with_quotes_safe(
    client: httpx.AsyncClient,
) -> None:
    name = 'le "film" d\'été 🎬\r\n.mp4'
    metadata = f"filetype {b64('video/mp4')},filename {b64(name)}"
    upload_id = await finished(client, metadata=metadata)
    response = await client.get(f"/files/{upload_id}", headers={"Range": "bytes=0-3"})
    assert response.status_code == 206
    assert response.content == DATA[:4]
    header = response.headers["Content-Disposition"]
    assert header == (
        'inline; filename="le _film_ d\'_t_ ___.mp4"; '
        "filename*=UTF-8''le%20_film_%20d%27%C3%A9t%C3%A9%20%F0%9F%8E%AC__.mp4"
    )
    params = disposition_params(header)
    assert params["filename*"] == "le _film_ d'été 🎬__.mp4"


async def test_the_name_key_is_used_without_filename(client: httpx.AsyncClient) -> None:
    upload_id = await finished(client, metadata=f"name {b64('notes.txt')}")
    response = await client.get(f"/files/{upload_id}")
    assert disposition_params(response.headers["Content-Disposition"])["filename"] == "notes.txt"


@pytest.mark.parametrize("filetype", ["video/mp4é", "vidéo/mp4", "video/mp4🎬", "text/html;x=1"])
async def test_a_type_with_non_ascii_or_parameters_is_octet_stream(
    client: httpx.AsyncClient, filetype: str
) -> None:
    upload_id = await finished(client, metadata=f"filetype {b64(filetype)}")
    response = await client.get(f"/files/{upload_id}")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/octet-stream"


# -- CORS ---------------------------------------------------------------------------------------

ORIGIN = "https://app.example"


@pytest.mark.parametrize("path", ["/files/", "/files/" + "a" * 32])
async def test_cors_preflight_for_patch_is_allowed(client: httpx.AsyncClient, path: str) -> None:
    response = await client.options(
        path,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "upload-offset,tus-resumable,content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] in ("*", ORIGIN)
    methods = {m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")}
    assert {"PATCH", "POST", "HEAD", "DELETE", "GET"} <= methods
    allowed = {
        h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")
    }
    assert {
        "upload-offset",
        "tus-resumable",
        "content-type",
        "upload-length",
        "upload-metadata",
        "upload-defer-length",
        "x-http-method-override",
    } <= allowed


async def test_cors_preflight_with_an_unknown_header_is_refused(
    client: httpx.AsyncClient,
) -> None:
    response = await client.options(
        "/files/",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "x-not-allowed",
        },
    )
    assert response.status_code == 400


async def test_cors_exposes_tus_headers(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/files/", headers={**TUS, "Upload-Length": "10", "Origin": ORIGIN}
    )
    assert response.status_code == 201
    assert response.headers["Access-Control-Allow-Origin"] in ("*", ORIGIN)
    exposed = {
        h.strip().lower() for h in response.headers["Access-Control-Expose-Headers"].split(",")
    }
    assert {
        "upload-offset",
        "location",
        "upload-length",
        "tus-resumable",
        "upload-expires",
        "tus-version",
        "tus-extension",
        "tus-max-size",
        "upload-metadata",
        "upload-defer-length",
    } <= exposed


async def test_cors_headers_are_on_error_responses_too(client: httpx.AsyncClient) -> None:
    response = await patch(client, "0" * 32, 0, b"x", Origin=ORIGIN)
    assert response.status_code == 404
    assert response.headers["Access-Control-Allow-Origin"] in ("*", ORIGIN)
    assert "upload-offset" in response.headers["Access-Control-Expose-Headers"].lower()


async def test_cors_only_for_configured_origins(data_dir: Path, database_url: str) -> None:
    async with serve(make_settings(data_dir, database_url, cors_origins=(ORIGIN,))) as served:
        allowed = await served.client.post(
            "/files/", headers={**TUS, "Upload-Length": "1", "Origin": ORIGIN}
        )
        assert allowed.headers["Access-Control-Allow-Origin"] == ORIGIN
        other = await served.client.post(
            "/files/", headers={**TUS, "Upload-Length": "1", "Origin": "https://evil.example"}
        )
        assert other.status_code == 201
        assert "Access-Control-Allow-Origin" not in other.headers
        preflight = await served.client.options(
            "/files/",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "PATCH"},
        )
        assert preflight.status_code == 400


async def test_no_cors_origins_means_no_cors_headers(data_dir: Path, database_url: str) -> None:
    async with serve(make_settings(data_dir, database_url, cors_origins=())) as served:
        response = await served.client.post(
            "/files/", headers={**TUS, "Upload-Length": "1", "Origin": ORIGIN}
        )
    assert response.status_code == 201
    assert "Access-Control-Allow-Origin" not in response.headers
