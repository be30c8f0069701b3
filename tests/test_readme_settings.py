"""The settings table (docs/configuration.md, linked from the README) and ``Settings`` agree:
every field has exactly one row, and every row names a field (``UPLOAD_`` + the field's name,
upper-cased)."""

from __future__ import annotations

import re
from pathlib import Path

from upload_service.settings import FLAT_NAMES

README = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
HEADER = "| variable | default | meaning |"
_VARIABLE = re.compile(r"`(UPLOAD_[A-Z0-9_]+)`")  # the whole first cell: one variable a row


def settings_tables(text: str) -> list[list[str]]:
    """Each settings table of the README: the first cell of each of its rows."""
    tables: list[list[str]] = []
    rows: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped == HEADER:
            rows = []
            tables.append(rows)
        elif rows is not None and stripped.startswith("|"):
            cells = [cell.strip() for cell in stripped.strip("|").split("|")]
            if not set(cells[0]) <= set("-: "):  # the separator row
                rows.append(cells[0])
        else:
            rows = None
    return tables


def settings_section(text: str) -> str:
    """The ``### Settings`` section: up to the next heading of its level or above."""
    start = text.index("\n### Settings\n")
    ends = [i for i in (text.find("\n## ", start + 1), text.find("\n### ", start + 1)) if i >= 0]
    return text[start : min(ends) if ends else len(text)]


def table_variables() -> list[str]:
    text = README.read_text(encoding="utf-8")
    tables = settings_tables(text)
    assert len(tables) == 1, (
        "docs/configuration.md must have one settings table (variable, default, meaning)"
    )
    assert HEADER in settings_section(text), "the settings table belongs in the Settings section"
    variables = []
    for cell in tables[0]:
        match = _VARIABLE.fullmatch(cell)
        assert match is not None, f"a row's first cell is one `UPLOAD_*` variable, not {cell!r}"
        variables.append(match[1])
    return variables


def field_variables() -> set[str]:
    return {"UPLOAD_" + name.upper() for name in FLAT_NAMES}


def test_every_setting_has_a_row_in_the_readme_table() -> None:
    missing = field_variables() - set(table_variables())
    assert not missing, f"settings without a row in the README's Operating table: {sorted(missing)}"


def test_every_row_of_the_readme_table_is_a_setting() -> None:
    unknown = set(table_variables()) - field_variables()
    assert not unknown, f"README rows that name no setting: {sorted(unknown)}"


def test_no_setting_has_two_rows() -> None:
    variables = table_variables()
    twice = sorted({name for name in variables if variables.count(name) > 1})
    assert not twice, f"settings with more than one row: {twice}"


def test_the_parser_reads_rows_and_ends_tables() -> None:
    text = f"x\n{HEADER}\n| --- | --- | --- |\n| `UPLOAD_A` | 1 | a |\n| `UPLOAD_B` | 2 | b |\n\n| other |\n"
    assert settings_tables(text) == [["`UPLOAD_A`", "`UPLOAD_B`"]]
