"""``upload-service --help`` and every subcommand's help read as plain text (no reST markup)."""

from __future__ import annotations

import argparse

import pytest

from upload_service.cli import main, parser


def _commands() -> list[str]:
    for action in parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return sorted(action.choices)
    raise AssertionError("no subcommands")


def test_there_are_subcommands() -> None:
    assert {"serve", "token", "upload", "status", "download"} <= set(_commands())


@pytest.mark.parametrize("args", [[], *([name] for name in _commands())], ids=repr)
def test_help_has_no_double_backticks(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([*args, "--help"])
    assert done.value.code == 0
    out, err = capsys.readouterr()
    assert out.startswith("usage: upload-service")
    assert "``" not in out
    assert err == ""
