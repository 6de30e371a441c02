"""Resident memory and CPU time of a process tree, read from ``/proc`` (Linux; psutil is not a
dependency).

``VmHWM`` is the peak resident set since the process started, ``VmRSS`` the current one
(proc(5)). A Celery prefork worker is a main process plus one child per pool slot; the
children load the model (``worker.app._load_classifier``), so each is reported apart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessMemory:
    pid: int
    role: str  # "main" or "child"
    peak_mib: float  # VmHWM
    rss_mib: float  # VmRSS when sampled

    def as_dict(self) -> dict[str, object]:
        return {"pid": self.pid, "role": self.role, "peak_mib": self.peak_mib, "rss_mib": self.rss_mib}


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's ``children`` file; needs CONFIG_PROC_CHILDREN)."""
    found: list[int] = []
    for task in sorted((PROC / str(pid) / "task").glob("*")):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended while we looked
    return sorted(set(found))


def _status_kib(pid: int, field: str) -> int:
    for line in (PROC / str(pid) / "status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])  # "VmRSS:   123456 kB"
    raise LookupError(f"{field} missing from /proc/{pid}/status")


def sample(pid: int, role: str) -> ProcessMemory:
    return ProcessMemory(
        pid=pid,
        role=role,
        peak_mib=round(_status_kib(pid, "VmHWM") / 1024, 1),
        rss_mib=round(_status_kib(pid, "VmRSS") / 1024, 1),
    )


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, breadth first."""
    found, pending = [], children(pid)
    while pending:
        child = pending.pop(0)
        found.append(child)
        pending += children(child)
    return found


def process_tree_memory(pid: int) -> list[ProcessMemory]:
    """The process ``pid`` and all its descendants, the root first."""
    tree = [sample(pid, "main")]
    for child in descendants(pid):
        try:
            tree.append(sample(child, "child"))
        except (FileNotFoundError, ProcessLookupError):
            continue  # a pool child recycled between the two reads
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` and its live descendants (proc(5) stat
    fields 14 and 15; a child that already exited is not counted)."""
    total = 0
    for process in (pid, *descendants(pid)):
        try:
            stat = (PROC / str(process) / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces; fields[0] is field 3
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot, all cores (proc(5) /proc/stat)."""
    ticks = [int(value) for value in (PROC / "stat").read_text().splitlines()[0].split()[1:]]
    idle, iowait = ticks[3], ticks[4]
    return (sum(ticks[:8]) - idle - iowait) / os.sysconf("SC_CLK_TCK")  # user..steal; guest is inside user


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process tree, of this process, and of the machine."""
    own = os.times()
    return {
        **{name: tree_cpu_seconds(pid) for name, pid in pids.items()},
        "bench_client": own.user + own.system,
        "machine": machine_busy_seconds(),
    }


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds between two snapshots; ``other`` is the machine's rest (database, broker, other users)."""
    used = {name: after[name] - before[name] for name in after}
    used["other"] = used["machine"] - sum(value for name, value in used.items() if name != "machine")
    return used
