"""Collecting the measurements into rows (median of the repetitions), the table with ratios to the
floors and the peers, the machine description, and the JSON file."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.config import Config
from bench.scenarios import REQUEST_KINDS, REQUESTS, Extra, Metric, applies, request_key
from bench.servers import Role, ServerSpec

# the reference columns of the table, in order; only those in the run's line-up are shown
REFERENCES = ("asgi-floor", "socket-floor", "tuspyserver", "tus-node")
# ... and our server on SQLite and local files, when the same server on PostgreSQL or on S3 is in
# the line-up too
VARIANT_REFERENCES = {"ours-pg": "ours", "ours-s3": "ours"}
# a measurement beside this much CPU of other processes (in cores) is flagged in the table
NOISY_CORES = 0.25


@dataclass(frozen=True, slots=True)
class Entry:
    """A server in the line-up, available or not."""

    key: str
    label: str
    role: Role
    version: str = ""
    unavailable: str = ""  # the reason, when it could not be installed
    s3: bool = False  # our server on an S3 store

    @classmethod
    def of(cls, spec: ServerSpec) -> Entry:
        return cls(spec.key, spec.label, spec.role, spec.version, s3=spec.s3)


@dataclass(slots=True)
class Row:
    metric: Metric
    server: Entry
    samples: list[float] = field(default_factory=list)
    extras: list[dict[str, Extra]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    unsupported: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    @property
    def status(self) -> str:
        if self.server.unavailable:
            return "unavailable"
        if self.unsupported:
            return "unsupported"
        if self.samples and not self.problems:
            return "ok"
        return "partial" if self.samples else "failed"


class Results:
    def __init__(self, metrics: list[Metric], lineup: list[Entry]) -> None:
        self.metrics = metrics
        self.lineup = lineup
        self.rows: dict[tuple[str, str], Row] = {
            (metric.key, entry.key): Row(metric, entry) for metric in metrics for entry in lineup
        }

    def add(self, metric_key: str, server_key: str, value: float, extras: dict[str, Extra]) -> None:
        row = self.rows[(metric_key, server_key)]
        row.samples.append(value)
        row.extras.append(extras)

    def problem(self, scenario: str, server_key: str, reason: str, *, unsupported: bool) -> None:
        for metric in self.metrics:
            if metric.scenario == scenario:
                row = self.rows[(metric.key, server_key)]
                if unsupported:
                    row.unsupported = reason
                else:
                    row.problems.append(reason)

    def unsupported(self, metric_key: str, server_key: str, reason: str) -> None:
        """One metric the server does not offer, while the others of its scenario were measured."""
        self.rows[(metric_key, server_key)].unsupported = reason

    def ratio(self, row: Row, reference: str) -> float | None:
        other = self.rows.get((row.metric.key, reference))
        mine = row.median
        theirs = other.median if other is not None else None
        if mine is None or theirs is None or theirs == 0 or reference == row.server.key:
            return None
        return mine / theirs

    def visible_rows(self, scenarios: list[str]) -> list[Row]:
        return [
            self.rows[(metric.key, entry.key)]
            for metric in self.metrics
            if metric.scenario in scenarios
            for entry in self.lineup
            if not self._not_applicable(metric, entry)
        ]

    def references(self) -> list[str]:
        keys = [entry.key for entry in self.lineup]
        variants = [ref for key, ref in VARIANT_REFERENCES.items() if key in keys and ref in keys]
        return list(dict.fromkeys(variants)) + [ref for ref in REFERENCES if ref in keys]

    def _not_applicable(self, metric: Metric, entry: Entry) -> bool:
        if not applies(metric.scenario, entry.role, s3=entry.s3):
            return True
        # an unsupported checksum scenario needs one row that says so, not two
        row = self.rows[(metric.key, entry.key)]
        return metric.key == "checksum.off" and row.status in ("unsupported", "unavailable")


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _note(row: Row) -> str:
    if row.status == "unavailable":
        return "not installed (see below)" if row.server.role is Role.PEER else "see below"
    if row.status == "unsupported":
        return row.unsupported
    notes = [f"{len(row.problems)} of {len(row.problems) + len(row.samples)} reps failed: "
             f"{row.problems[0][:120]}"] if row.problems else []  # fmt: skip
    foreign = [float(extra.get("foreign_cores", 0.0)) for extra in row.extras]
    if foreign and max(foreign) >= NOISY_CORES:
        notes.append(f"other load up to {max(foreign):.1f} cores")
    if row.metric.scenario == "lockwait" and row.extras:
        lockers = sorted({str(extra["locker"]) for extra in row.extras if "locker" in extra})
        notes.append("locker: " + (" / ".join(lockers) or "unknown"))
        attempts = [int(extra["attempts"]) for extra in row.extras if "attempts" in extra]
        if row.metric.key == "lockwait.patch" and attempts and max(attempts) > 1:
            notes.append(f"up to {max(attempts)} attempts (423/409)")
    if row.metric.scenario == "s3" and row.extras:
        notes += _s3_notes(row)
    if row.metric.key == "form.form" and row.extras:
        ratios = [float(extra["ratio_form_tus"]) for extra in row.extras]
        notes.append(f"{statistics.median(ratios):.2f}x the tus PATCH")
    if row.metric.key == "checksum.on" and row.extras:
        ratios = [float(extra["ratio_on_off"]) for extra in row.extras]
        notes.append(f"{statistics.median(ratios):.2f}x unchecked")
        stalls = [float(e["probe_max_ms_on"]) for e in row.extras if "probe_max_ms_on" in e]
        if stalls:
            notes.append(f"GET max {statistics.median(stalls):.1f} ms meanwhile")
    return "; ".join(notes)


def _median_of(row: Row, key: str) -> float | None:
    values = [float(extra[key]) for extra in row.extras if key in extra]
    return statistics.median(values) if values else None


def _s3_notes(row: Row) -> list[str]:
    """Where the S3 scenario's time went: moto's CPU (and the client's) per GB, the ratios."""
    key = row.metric.key
    notes = []
    if key == "s3.ratio":
        notes.append("per repetition: " + ", ".join(f"{value:.2f}" for value in row.samples))
    for name, prefix in (("s3.ours", ""), ("s3.boto3", "boto3_")):
        if key != name:
            continue
        moto = _median_of(row, f"{prefix}moto_cpu_s_per_gb")
        own = _median_of(row, f"{prefix}client_cpu_s_per_gb")
        if moto is not None:
            notes.append(f"moto {moto:.2f} CPU-s/GB")
        if own is not None:
            notes.append(f"{'boto3' if prefix else 'curl'} {own:.2f} CPU-s/GB")
    if key == "s3.direct":
        moto = _median_of(row, "direct_moto_cpu_s_per_gb")
        served = _median_of(row, "direct_server_cpu_s_per_gb")
        if moto is not None:
            notes.append(f"moto {moto:.2f} CPU-s/GB")
        if served is not None:
            notes.append(f"service {served:.2f} CPU-s/GB")
    if key == "s3.direct_ratio":
        notes.append("per repetition: " + ", ".join(f"{value:.2f}" for value in row.samples))
    return notes


def table(results: Results, scenarios: list[str], config: Config) -> str:
    """The table of every metric, then scenario 13's own tables, then who was unavailable."""
    lines = []
    general = [name for name in scenarios if name not in REQUESTS]
    if general:
        lines.append(_general_table(results, general))
    if any(name in REQUESTS for name in scenarios):
        lines.append(_request_tables(results, config))
    for entry in results.lineup:
        if entry.unavailable:
            lines.append(f"{entry.label} unavailable: {entry.unavailable}")
    return "\n\n".join(lines)


def _general_table(results: Results, scenarios: list[str]) -> str:
    references = results.references()
    labels = {entry.key: entry.label for entry in results.lineup}
    head = ["scenario", "server", "median", "unit", "min-max"]
    head += [f"vs {labels[ref]}" for ref in references] + ["note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in results.visible_rows(scenarios):
        median = row.median
        arrow = "↑" if row.metric.higher_is_better else "↓"
        cells = [
            row.metric.label,
            row.metric.subject or row.server.label,
            _number(median) if median is not None else row.status,
            f"{row.metric.unit} {arrow}",
            f"{_number(min(row.samples))}-{_number(max(row.samples))}" if row.samples else "",
        ]
        for ref in references:
            ratio = results.ratio(row, ref)
            cells.append(f"{ratio:.2f}x" if ratio is not None else "")
        cells.append(_note(row))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(row: Row, *, count: bool = False) -> str:
    if row.median is None:
        return row.status
    return f"{row.median:g}" if count else _number(row.median)


def _vs(results: Results, row: Row, reference: str) -> str:
    ratio = results.ratio(row, reference)
    return f"{ratio:.2f}x" if ratio is not None else ""


def _markdown(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])


def _request_tables(results: Results, config: Config) -> str:
    """Scenario 13: the cycles of each load, then each kind of request alone (medians of the
    repetitions); the ratios to @tus/server when it ran."""
    servers = [entry for entry in results.lineup if applies(REQUESTS[0], entry.role, s3=entry.s3)]
    node = "tus-node"
    vs_node = any(entry.key == node and not entry.unavailable for entry in servers)

    def row(group: str, value: str, entry: Entry) -> Row:
        return results.rows[(request_key(group, value), entry.key)]

    head = ["server", "clients", "uploads/s ↑", "CPU ms/upload ↓", "HEAD p50 ms", "HEAD p99 ms"]
    head += ["errors", "503s"]
    head += ["uploads/s vs @tus/server", "CPU/upload vs @tus/server"] if vs_node else []
    head.append("note")
    body = []
    for clients in config.requests_clients:
        group = f"c{clients}"
        for entry in servers:
            uploads, cpu = row(group, "uploads", entry), row(group, "cpu", entry)
            cells = [entry.label, str(clients), _cell(uploads), _cell(cpu)]
            cells += [_cell(row(group, value, entry)) for value in ("head_p50", "head_p99")]
            cells += [_cell(row(group, value, entry), count=True) for value in ("errors", "shed")]
            cells += [_vs(results, uploads, node), _vs(results, cpu, node)] if vs_node else []
            kinds = {str(extra.get(f"{group}_error_kinds", "")) for extra in uploads.extras}
            notes = [_note(uploads), *sorted(kind for kind in kinds if kind)]
            cells.append("; ".join(note for note in notes if note))
            body.append(cells)
    kind_head = ["request", "server", "requests/s ↑", "CPU ms/request ↓", "errors", "503s"]
    kind_head += ["requests/s vs @tus/server", "CPU vs @tus/server"] if vs_node else []
    kind_head.append("note")
    kind_body = []
    for kind in REQUEST_KINDS:
        group = kind.lower()
        for entry in servers:
            rate, cpu = row(group, "rps", entry), row(group, "cpu", entry)
            cells = [f"{kind} alone, {config.requests_clients[0]} clients", entry.label]
            cells += [_cell(rate), _cell(cpu)]
            for value in ("errors", "shed"):
                median = _median_of(rate, f"{group}_{value}")
                cells.append(f"{median:g}" if median is not None else "")
            cells += [_vs(results, rate, node), _vs(results, cpu, node)] if vs_node else []
            notes = [_note(rate)]
            created = _median_of(rate, f"{group}_created_in_phase")
            if created:
                notes.append(f"{created:g} uploads created in the measured time")
            kinds = {str(extra.get(f"{group}_error_kinds", "")) for extra in rate.extras}
            notes += sorted(kind for kind in kinds if kind)
            cells.append("; ".join(note for note in notes if note))
            kind_body.append(cells)
    return _markdown(head, body) + "\n\n" + _markdown(kind_head, kind_body)


def _command(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "not found"
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"error: {exc}"
    if done.returncode != 0:
        return "unknown"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0


def machine(repo: Path, cache: Path) -> dict[str, object]:
    disk = os.statvfs(cache)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "memory_gib": round(_mem_total_gib(), 1),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "node": _command(["node", "--version"]),
        "curl": _command(["curl", "--version"]),
        "loadavg_at_start": list(os.getloadavg()),
        "disk_free_gib": round(disk.f_bavail * disk.f_frsize / 2**30, 1),
        "git_commit": _command(["git", "-C", str(repo), "rev-parse", "HEAD"]),
        # bench/ itself counts: a run from an uncommitted suite says "dirty"
        "git_status": _command(
            ["git", "--no-optional-locks", "-C", str(repo), "status", "--porcelain"]
        )
        or "clean",
    }


def write_json(
    path: Path,
    *,
    results: Results,
    scenarios: list[str],
    config: Config,
    machine_info: dict[str, object],
    started: float,
    argv: list[str],
    table_text: str,
) -> None:
    references = results.references()
    rows = []
    for row in results.visible_rows(scenarios):
        rows.append(
            {
                "metric": row.metric.key,
                "scenario": row.metric.scenario,
                "server": row.server.key,
                "subject": row.metric.subject or row.server.label,
                "status": row.status,
                "median": row.median,
                "min": min(row.samples) if row.samples else None,
                "max": max(row.samples) if row.samples else None,
                "samples": row.samples,
                "extras": row.extras,
                "problems": row.problems,
                "reason": row.unsupported or row.server.unavailable,
                "ratios": {ref: results.ratio(row, ref) for ref in references},
            }
        )
    document = {
        "schema": 1,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "argv": argv,
        "machine": {**machine_info, "loadavg_at_end": list(os.getloadavg())},
        "config": asdict(config),
        "scenarios": scenarios,
        "servers": {
            entry.key: {
                "label": entry.label,
                "role": entry.role.value,
                "version": entry.version,
                "available": not entry.unavailable,
                "reason": entry.unavailable,
            }
            for entry in results.lineup
        },
        "metrics": {
            metric.key: {
                "label": metric.label,
                "unit": metric.unit,
                "higher_is_better": metric.higher_is_better,
                "scenario": metric.scenario,
            }
            for metric in results.metrics
            if metric.scenario in scenarios
        },
        "results": rows,
        "table": table_text,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
