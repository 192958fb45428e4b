"""The CPU time every worker of a `--workers` server has used, read from /proc.

Each worker prices CPU on its share of the cores (router.cpu); but the kernel gives each
connection to one worker, so a worker in a lull of its own arrivals would read its share idle
while the others keep the cores busy, and spend that room on variants the machine cannot
afford (the simulator: four workers, 6.3 points under the best static variant at 3× fp32's
capacity; docs/routing.md). So a worker reads the CPU time of all its siblings — the
supervisor's children — as well as its own, and its utilization is theirs (the
`workers_cpu` mechanism, RouterConfig). Processes outside the server (a background build,
a load generator) are not counted: a niced build yields its cores to the server.

Linux only: /proc/<pid>/task/<tid>/children lists the children each thread started. Where it cannot be
read, `workers_cpu_s` answers None and the worker accounts on its own CPU time, as before.
"""

from __future__ import annotations

import os
from pathlib import Path

OWN_TIME_FIELDS = slice(11, 13)  # utime stime: proc(5)'s fields 14-15, counted after the command name
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int, proc: Path = Path("/proc")) -> float | None:
    """A process's CPU seconds (user + system), None once it is gone."""
    try:
        fields = (proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return sum(int(value) for value in fields[OWN_TIME_FIELDS]) / CLOCK_TICKS_PER_S


def workers_cpu_s(supervisor: int, proc: Path = Path("/proc")) -> float | None:
    """The CPU seconds every child of `supervisor` (its workers) has used, None where the
    children cannot be listed. A worker that has died is missing from the sum from then on
    (the account's next reading is then lower: `CpuAccount.sample` starts afresh on a reading
    that went back)."""
    children: list[str] = []
    try:  # each thread lists the children it started
        for task in (proc / str(supervisor) / "task").iterdir():
            children += (task / "children").read_text().split()
    except (FileNotFoundError, PermissionError):
        return None
    times = [process_cpu_s(int(pid), proc) for pid in children]
    return sum(t for t in times if t is not None)
