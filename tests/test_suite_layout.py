"""The suite's own layout: every test module under ``tests/e2e/`` is marked ``e2e``, so that the
fast suite (``-m "not e2e"``, docs/development.md) leaves out what starts server processes,
browsers and containers, and the e2e turn (``tests/conftest.py``) schedules it."""

from __future__ import annotations

import ast
from pathlib import Path

E2E = Path(__file__).parent / "e2e"


def marks_e2e(source: str) -> bool:
    """Whether the module sets ``pytestmark`` to ``pytest.mark.e2e`` (alone or in a list)."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "pytestmark" for target in node.targets
        ):
            return "pytest.mark.e2e" in ast.unparse(node.value)
    return False


def test_the_check_tells_a_marked_module_from_an_unmarked_one() -> None:
    assert marks_e2e("import pytest\npytestmark = pytest.mark.e2e\n")
    assert marks_e2e("import pytest\npytestmark = [pytest.mark.e2e, pytest.mark.solo]\n")
    assert not marks_e2e("import pytest\npytestmark = pytest.mark.anyio\n")
    assert not marks_e2e("import pytest\n# pytest.mark.e2e\n")


def test_every_e2e_module_is_marked_e2e() -> None:
    modules = sorted(E2E.glob("test_*.py"))
    assert modules
    unmarked = [path.name for path in modules if not marks_e2e(path.read_text(encoding="utf-8"))]
    assert unmarked == [], f"not marked e2e (pytestmark = pytest.mark.e2e): {unmarked}"
