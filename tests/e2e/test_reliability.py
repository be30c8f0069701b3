"""A small kill storm on each configuration (tests/reliability/storm.py says what it checks);
``scripts/reliability --kills 200`` is the long run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.support import Servers, Source, attach_log_on_failure
from tests.reliability.storm import Storm
from tests.reliability.targets import NAMES, target

pytestmark = pytest.mark.e2e

KILLS = 20  # per configuration: about a minute each


@pytest.mark.parametrize("name", NAMES)
def test_kill_storm_loses_nothing_acknowledged(
    name: str, request: pytest.FixtureRequest, tmp_path: Path, source: Source
) -> None:
    servers = Servers(tmp_path)
    try:
        with target(name, lambda: str(request.getfixturevalue("moto_endpoint"))) as made:
            storm = Storm(servers, made, source.path, kills=KILLS)
            figures = storm.run()
    finally:
        servers.stop_all()
        for server in servers.started[-3:]:
            attach_log_on_failure(request.node, f"storm server log {server.name}", server.log_path)
    shown = json.dumps({"seed": storm.seed, **figures.summary(), "answers": figures.answers})
    assert figures.violations == [], f"{shown}\n" + "\n".join(figures.violations[:20])
    assert figures.kills == KILLS, shown
    assert figures.uploads > 0, shown
    assert figures.acknowledged > 0, shown
