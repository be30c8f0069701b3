"""``python -m tests.reliability``: kill storms on the configurations asked for, each with its
figures printed (one JSON line each, then a table); exit 1 if any invariant was violated.
``scripts/reliability`` runs it in the project's virtual environment."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

from tests import s3
from tests.e2e.support import MiB, Servers, write_random_file
from tests.reliability.storm import Storm
from tests.reliability.targets import NAMES, target

SOURCE_SIZE = 64 * MiB + 12_345


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/reliability", description=__doc__)
    parser.add_argument("--kills", type=int, default=20, help="kills per configuration (20)")
    parser.add_argument(
        "--configs",
        default=",".join(NAMES),
        help=f"comma-separated, of {', '.join(NAMES)} (all)",
    )
    parser.add_argument("--clients", type=int, default=3, help="concurrent uploaders (3)")
    parser.add_argument("--seed", type=int, default=None, help="the storm's random seed")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.configs.split(",") if name.strip()]
    unknown = sorted(set(names) - set(NAMES))
    if unknown:
        parser.error(f"unknown configuration(s) {', '.join(unknown)}: of {', '.join(NAMES)}")

    work = Path(tempfile.mkdtemp(prefix="reliability-"))
    source = work / "source.bin"
    write_random_file(source, SOURCE_SIZE)
    results = []
    with ExitStack() as stack:
        endpoint: list[str] = []

        def moto_endpoint() -> str:
            if not endpoint:
                endpoint.append(stack.enter_context(s3.moto_server(work / "moto.log")))
            return endpoint[0]

        for name in names:
            servers = Servers(work / name)
            started = time.monotonic()
            try:
                with target(name, moto_endpoint) as made:
                    storm = Storm(
                        servers,
                        made,
                        source,
                        kills=args.kills,
                        clients=args.clients,
                        seed=args.seed,
                    )
                    figures = storm.run()
            finally:
                servers.stop_all()
            result = {
                "config": name,
                "seed": storm.seed,
                **figures.summary(),
                "seconds": round(time.monotonic() - started, 1),
                "answers": figures.answers,
            }
            results.append(result)
            print(json.dumps(result), flush=True)
            for violation in figures.violations:
                print(f"  violation: {violation}", flush=True)
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    print(f"\nKill storms of {day}, {args.clients} clients each (work directory: {work}):\n")
    print(
        "| configuration | kills | PATCHes | acknowledged | uploads verified | of them finals "
        "| MiB verified | violations |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['config']} | {r['kills']} | {r['patches']} | {r['acknowledged']} | {r['uploads']} "
            f"| {r['finals']} | {int(r['bytes']) / MiB:.0f} | {r['violations']} |"
        )
    if not args.keep and not any(r["violations"] for r in results):
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any(r["violations"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
