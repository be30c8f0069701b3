"""The README's and the docs' shell recipes work as typed on a fresh machine, and their links
lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
AUTHENTICATION = DOCS / "authentication.md"


def pages() -> list[Path]:
    """The README and every page of docs/: where the recipes live."""
    found = sorted(DOCS.glob("*.md"))
    assert AUTHENTICATION in found, "docs/authentication.md holds the token recipe"
    return [README, *found]


def _curl_lines() -> list[str]:
    return [
        line
        for page in pages()
        for line in page.read_text().splitlines()
        if re.match(r"\s*curl\s", line)
    ]


def test_downloads_write_to_a_named_file() -> None:
    # -O/-J take the name from the URL or Content-Disposition: in the folder of the uploaded
    # file that is the file itself (-J refuses to overwrite it and fails; -O alone names the
    # file after the upload id)
    lines = _curl_lines()
    remote_named = [line for line in lines if re.search(r"\s-(O|J|OJ|JO)\b", line)]
    assert remote_named == []
    readme_curl = [line for line in README.read_text().splitlines() if re.match(r"curl\s", line)]
    assert any(re.search(r"\s-o \S+", line) for line in readme_curl), (
        "the README downloads to a named file"
    )


def test_the_test_token_comes_from_the_token_command() -> None:
    for page in pages():
        assert "import jwt" not in page.read_text(), page  # a system Python has no PyJWT
    text = AUTHENTICATION.read_text()
    assert "TOKEN=$(.venv/bin/upload-service token --sub alice)" in text
    assert 'export UPLOAD_AUTH_JWT_SECRET="$(openssl rand -base64 48)"' in text
    for page in (README, AUTHENTICATION):
        assert "upload-service token --sub NAME [--ttl SECONDS]" in page.read_text(), page


def test_the_readme_names_the_command_by_its_path() -> None:
    text = README.read_text()
    assert "`.venv/bin/upload-service`" in text
    assert re.search(r"^\.venv/bin/upload-service upload ", text, re.MULTILINE)


_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown page."""
    found: set[str] = set()
    for line in _prose(page.read_text()).splitlines():
        match = re.match(r"#{1,6} (.+)", line)
        if match is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", match[1].strip().lower().replace("`", "")).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in found:
            n += 1
            candidate = f"{slug}-{n}"
        found.add(candidate)
    return found


def test_anchors_follow_github() -> None:
    page = DOCS / "protocol.md"
    assert "form-uploads-no-tus-client-needed" in anchors(page)
    assert "the-command-line-uploader" in anchors(page)


def test_every_relative_link_points_to_an_existing_file() -> None:
    broken = []
    for page in pages():
        for target in _LINK.findall(_prose(page.read_text())):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert broken == []


def test_every_docs_page_is_linked_from_the_readme_and_links_back() -> None:
    readme = README.read_text()
    for page in pages()[1:]:
        assert f"](docs/{page.name})" in readme or f"](docs/{page.name}#" in readme, page.name
        first = page.read_text().split("\n\n", 2)
        assert first[0].startswith("# "), page.name  # a title, then the one-line summary
        assert "](../README.md)" in first[1], page.name
