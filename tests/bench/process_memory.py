"""Resident memory of a process tree, read from ``/proc`` (Linux; psutil is not a dependency).

``VmHWM`` is the peak resident set since the process started, ``VmRSS`` the current one
(proc(5)). A Celery prefork worker is a main process plus one child per pool slot; the
children load the model (``worker.app._load_classifier``), so each is reported apart.
"""

from __future__ import annotations

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


def process_tree_memory(pid: int) -> list[ProcessMemory]:
    """The process ``pid`` and all its descendants, the root first."""
    tree = [sample(pid, "main")]
    pending = children(pid)
    while pending:
        child = pending.pop(0)
        try:
            tree.append(sample(child, "child"))
        except (FileNotFoundError, ProcessLookupError):
            continue  # a pool child recycled between the two reads
        pending += children(child)
    return tree
