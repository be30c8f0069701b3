"""What ``/proc`` says about a server process and its descendants: CPU seconds and memory.

A server may be several processes (a supervisor with workers, or a launcher with a child), so every
reading walks the whole tree below the PID we started. CPU time of children that already exited is
counted through the parent's ``cutime``/``cstime``; memory of exited children is gone, which is why
the RSS scenario also samples while the load runs.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
KiB = 1024


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """Seconds of user + system CPU, own (living tree) and of reaped children."""

    own: float
    reaped_children: float

    @property
    def total(self) -> float:
        return self.own + self.reaped_children


@dataclass(frozen=True, slots=True)
class Memory:
    """Resident set sizes in bytes over a process tree."""

    processes: int
    rss_total: int  # VmRSS summed over the tree, now
    hwm_max: int  # the largest VmHWM (peak RSS) of any one process of the tree
    hwm_total: int  # VmHWM summed: an upper bound of the tree's peak


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` split after the command name (which may hold spaces and parens)."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # fields[0] is field 3 (state); see proc(5)
    return raw[raw.rindex(")") + 2 :].split()


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its living descendants (``pid`` first); empty when ``pid`` is gone."""
    if _stat_fields(pid) is None:
        return []
    children = _children_map()
    tree = [pid]
    index = 0
    while index < len(tree):
        tree.extend(children.get(tree[index], []))
        index += 1
    return tree


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot): tells a process from a later one that got
    the same PID."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])  # field 22 of proc(5)


def cpu_times(pid: int) -> CpuTimes:
    own = 0
    reaped = 0
    for member in process_tree(pid):
        fields = _stat_fields(member)
        if fields is None:
            continue
        # utime, stime, cutime, cstime are fields 14-17 of proc(5); fields[0] is field 3
        own += int(fields[11]) + int(fields[12])
        reaped += int(fields[13]) + int(fields[14])
    return CpuTimes(own=own / CLOCK_TICKS, reaped_children=reaped / CLOCK_TICKS)


def _status_kib(pid: int, key: str) -> int:
    try:
        text = (PROC / str(pid) / "status").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def memory(pid: int) -> Memory:
    tree = process_tree(pid)
    hwm = [_status_kib(member, "VmHWM") * KiB for member in tree]
    rss = [_status_kib(member, "VmRSS") * KiB for member in tree]
    return Memory(
        processes=len(tree),
        rss_total=sum(rss),
        hwm_max=max(hwm, default=0),
        hwm_total=sum(hwm),
    )


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (all cores; /proc/stat's first line
    without idle and iowait), to tell how much other work ran beside a measurement."""
    fields = (PROC / "stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


class Noise:
    """How many cores' worth of CPU went to processes other than these servers and this client
    (curl included) while a measurement ran: a measure of how disturbed it was."""

    def __init__(self, *server_pids: int) -> None:
        self.wall = time.monotonic()
        self.busy = busy_cpu_seconds()
        self.servers = {pid: cpu_times(pid).total for pid in server_pids}
        self.last: dict[int, float] = {}
        self.own = self._own()

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def last_reading(self, pid: int) -> None:
        """Read ``pid``'s CPU now, before it is killed: a dead process has no counters left."""
        self.last[pid] = cpu_times(pid).total

    def foreign_cores(self) -> float:
        busy = busy_cpu_seconds() - self.busy
        server = sum(
            self.last.get(pid, cpu_times(pid).total) - before
            for pid, before in self.servers.items()
        )
        own = self._own() - self.own
        return max(0.0, busy - server - own) / max(time.monotonic() - self.wall, 1e-9)
