"""What the benchmarks read of running processes: CPU time from /proc, and the web process's waiting long polls."""

from __future__ import annotations

import os
from pathlib import Path

import requests


def cpu_seconds(pid: int, with_children: bool = False) -> float:
    """User + system CPU a process has used so far (and its live children's: gunicorn's workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or (with_children and int(fields[1]) == pid):
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


class CpuMeter:
    """CPU used per named process between start() and stop(), to show where the time goes."""

    def __init__(self, pids: dict[str, tuple[int, bool]]):
        self.pids = pids
        self.used: dict[str, float] = {}

    def start(self) -> None:
        self.before = {name: cpu_seconds(pid, kids) for name, (pid, kids) in self.pids.items()}

    def stop(self) -> dict[str, float]:
        self.used = {name: cpu_seconds(pid, kids) - self.before[name] for name, (pid, kids) in self.pids.items()}
        return self.used


def waiting_polls(url: str) -> int:
    """Long polls the web process holds now (its web_long_polls_waiting gauge, all workers)."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("web_long_polls_waiting{")))
