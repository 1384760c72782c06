"""The dashboard's chart: tasks created, completed, failed and cancelled per minute over the last hour.

Read from task_minutes (a trigger on task_events keeps it; migration 0007), at most
60 × 4 rows per integration, so the chart costs the same at any table size. Here the
rows become geometry; the template draws it as inline SVG (no script, no style
attribute: the CSP allows neither, the stylesheet colours it by class).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

MINUTES = 60
KINDS = ("created", "completed", "failed", "cancelled")
OUTCOMES = ("completed", "failed", "cancelled")  # stacked, in this order from the bottom
SLOT, LEFT, TOP, PLOT_HEIGHT = 12, 40, 8, 120  # px: one minute's width, y-axis room, top room, plot height
WIDTH, HEIGHT = LEFT + MINUTES * SLOT + 16, TOP + PLOT_HEIGHT + 22


@dataclass(frozen=True)
class Bar:
    kind: str
    minute: int  # epoch seconds of the minute's start
    n: int
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    totals: dict[str, int]
    top: int  # the y axis' maximum
    ticks: list[tuple[float, str]]  # x positions and labels of the time axis
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    base: int = TOP + PLOT_HEIGHT  # y of the axis line


def per_minute(conn: sqlite3.Connection, namespaces: list[str], now: float | None = None) -> Chart:
    """The last MINUTES minutes (this one last) of the given integrations."""
    now = time.time() if now is None else now
    last = int(now // 60)
    first = last - MINUTES + 1
    marks = ", ".join("?" for _ in namespaces)
    # CAST: PostgreSQL's SUM of a bigint is a numeric (Decimal); its task_minutes holds delta rows to add up
    rows = conn.execute(f"SELECT minute, kind, CAST(SUM(n) AS BIGINT) FROM task_minutes WHERE minute >= ? "
                        f"AND minute <= ? AND namespace IN ({marks}) GROUP BY minute, kind",
                        (first, last, *namespaces))
    counts = {(minute, kind): n for minute, kind, n in rows}
    peak = max([counts.get((m, "created"), 0) for m in range(first, last + 1)]
               + [sum(counts.get((m, k), 0) for k in OUTCOMES) for m in range(first, last + 1)])
    top = nice(peak)
    scale = PLOT_HEIGHT / top
    bars = []
    for i, minute in enumerate(range(first, last + 1)):
        x = LEFT + i * SLOT
        created = counts.get((minute, "created"), 0)
        if created:
            bars.append(Bar("created", minute * 60, created, x + 1, TOP + PLOT_HEIGHT - created * scale, 4,
                            created * scale))
        stacked = 0
        for kind in OUTCOMES:
            n = counts.get((minute, kind), 0)
            if n:
                stacked += n
                bars.append(Bar(kind, minute * 60, n, x + 6, TOP + PLOT_HEIGHT - stacked * scale, 5, n * scale))
    totals = {kind: sum(counts.get((m, kind), 0) for m in range(first, last + 1)) for kind in KINDS}
    ticks = [(LEFT + i * SLOT, f"-{MINUTES - i}m" if i < MINUTES else "now") for i in range(0, MINUTES + 1, 15)]
    return Chart(bars, totals, top, ticks)


def nice(peak: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... at or above `peak` (an axis maximum that reads well)."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= peak:
                return step * factor
        step *= 10
