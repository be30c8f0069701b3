"""docs/configuration.md documents every setting, as the code does: its tables are exactly what
the generator renders from the fields, in its Settings section, every field has one row and a
meaning, and the README links there instead of keeping a table of its own."""

from __future__ import annotations

import re
from pathlib import Path

from upload_service.settings import FLAT_NAMES, Settings
from upload_service.settings.docs import BEGIN, END, HEADER, main, rendered, settings_table

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"
_VARIABLE = re.compile(r"`(UPLOAD_[A-Z0-9_]+)`")  # the whole first cell: one variable a row


def settings_tables(text: str) -> list[list[str]]:
    """Each settings table of a document: the first cell of each of its rows."""
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
    """The ``### Settings`` section: up to the next heading of its level or above (the group
    tables' ``####`` headings are inside it)."""
    start = text.index("\n### Settings\n")
    ends = [i for i in (text.find("\n## ", start + 1), text.find("\n### ", start + 1)) if i >= 0]
    return text[start : min(ends) if ends else len(text)]


def table_variables() -> list[str]:
    text = CONFIGURATION.read_text(encoding="utf-8")
    tables = settings_tables(text)
    assert len(tables) == len(Settings.model_fields), "one table a group of settings"
    assert len(settings_tables(settings_section(text))) == len(tables), (
        "the settings tables belong in the Settings section"
    )
    variables = []
    for cell in (cell for table in tables for cell in table):
        match = _VARIABLE.fullmatch(cell)
        assert match is not None, f"a row's first cell is one `UPLOAD_*` variable, not {cell!r}"
        variables.append(match[1])
    return variables


def field_variables() -> set[str]:
    return {"UPLOAD_" + name.upper() for name in FLAT_NAMES}


def test_the_configuration_tables_are_what_the_generator_renders() -> None:
    text = CONFIGURATION.read_text(encoding="utf-8")
    assert (text.count(BEGIN), text.count(END)) == (1, 1), "one pair of settings markers"
    inside = text[text.index(BEGIN) + len(BEGIN) : text.index(END)]
    assert inside == "\n" + settings_table() + "\n", (
        "docs/configuration.md is out of date: run python -m upload_service.settings.docs"
    )
    assert main(["--check", "--path", str(CONFIGURATION)]) == 0


def test_the_configuration_says_how_to_regenerate_it() -> None:
    assert "python -m upload_service.settings.docs" in CONFIGURATION.read_text(encoding="utf-8")


def test_the_check_fails_on_a_stale_document(tmp_path: Path) -> None:
    stale = tmp_path / "configuration.md"
    current = CONFIGURATION.read_text(encoding="utf-8")
    stale.write_text(current.replace("`UPLOAD_PORT`", "`UPLOAD_PORT_OLD`"), encoding="utf-8")
    assert main(["--check", "--path", str(stale)]) == 1
    assert main(["--path", str(stale)]) == 0  # regenerated
    assert stale.read_text(encoding="utf-8") == current
    assert rendered(current) == current


def test_every_setting_has_a_row() -> None:
    missing = field_variables() - set(table_variables())
    assert not missing, f"settings without a row in docs/configuration.md: {sorted(missing)}"


def test_every_row_is_a_setting() -> None:
    unknown = set(table_variables()) - field_variables()
    assert not unknown, f"docs/configuration.md rows that name no setting: {sorted(unknown)}"


def test_no_setting_has_two_rows() -> None:
    variables = table_variables()
    twice = sorted({name for name in variables if variables.count(name) > 1})
    assert not twice, f"settings with more than one row: {twice}"


def test_every_setting_has_a_meaning() -> None:
    for group in Settings.model_fields.values():
        model = group.annotation
        assert isinstance(model, type)
        for name, info in getattr(model, "model_fields", {}).items():
            assert info.description, f"{model.__name__}.{name} has no description"


def test_the_readme_links_to_the_configuration_instead_of_a_table() -> None:
    text = README.read_text(encoding="utf-8")
    assert settings_tables(text) == [], "the settings tables live in docs/configuration.md"
    assert "](docs/configuration.md)" in text, "the README links to docs/configuration.md"


def test_the_parser_reads_rows_and_ends_tables() -> None:
    text = f"x\n{HEADER}\n| --- | --- | --- |\n| `UPLOAD_A` | 1 | a |\n| `UPLOAD_B` | 2 | b |\n\n| other |\n"
    assert settings_tables(text) == [["`UPLOAD_A`", "`UPLOAD_B`"]]
