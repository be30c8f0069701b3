"""docs/configuration.md's tables, rendered from the fields of the settings: one table a group,
one row a variable (its default and its meaning, the field's description).

``python -m upload_service.settings.docs`` rewrites the tables between the markers of
docs/configuration.md; ``--check`` only says whether they are current (exit 1 when not).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from upload_service.settings import Settings
from upload_service.settings._base import Group

BEGIN = "<!-- settings:begin -->"
END = "<!-- settings:end -->"
HEADER = "| variable | default | meaning |"
DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
TITLES = {
    "server": "Server",
    "storage": "Storage",
    "s3": "S3 storage",
    "database": "Database",
    "locking": "Locking",
    "limits": "Limits",
    "api": "JSON API and downloads",
    "video": "Video details",
    "auth": "Authentication",
    "hooks": "Hooks and webhooks",
    "observability": "Metrics and logs",
}


def default_text(info: FieldInfo) -> str:
    """The default as the table shows it: the field's ``shown_default``, else its value."""
    extra = info.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("shown_default"), str):
        return str(extra["shown_default"])
    value = info.get_default(call_default_factory=True)
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None:
        return "unset"
    if value in ("", ()):
        return "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    if isinstance(value, tuple):
        return f"`{','.join(str(item) for item in value)}`"
    return f"`{value}`"


def _group_table(name: str, model: type[Group]) -> str:
    lines = [
        f"#### {TITLES[name]} (`settings.{name}`)",
        "",
        HEADER,
        "| --- | --- | --- |",
    ]
    for field, info in model.model_fields.items():
        variable = "UPLOAD_" + (info.alias or field).upper()
        meaning = (info.description or "").replace("|", "\\|")
        lines.append(f"| `{variable}` | {default_text(info)} | {meaning} |")
    return "\n".join(lines)


def settings_table() -> str:
    """Every group's table, in the order of ``Settings``' fields, as Markdown."""
    tables = []
    for name, info in Settings.model_fields.items():
        model = info.annotation
        assert isinstance(model, type)
        assert issubclass(model, Group)
        tables.append(_group_table(name, model))
    return "\n\n".join(tables)


def rendered(document: str) -> str:
    """``document`` with the part between the markers replaced by the current tables."""
    start = document.index(BEGIN) + len(BEGIN)
    end = document.index(END, start)
    return document[:start] + "\n" + settings_table() + "\n" + document[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m upload_service.settings.docs",
        description="Regenerate the settings tables of docs/configuration.md from the fields.",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is not current")
    parser.add_argument("--path", type=Path, default=DOCUMENT)
    args = parser.parse_args(argv)
    current = args.path.read_text(encoding="utf-8")
    wanted = rendered(current)
    if args.check:
        if current != wanted:
            print(f"{args.path} is out of date: run python -m upload_service.settings.docs")
            return 1
        return 0
    if current != wanted:
        args.path.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
