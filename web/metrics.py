"""The web process's Prometheus metrics, served at GET /metrics (text format).

Task counts and the oldest pending task's age are read from the database at
scrape time. Claims, reports and waiting long polls are counted where they
happen; under gunicorn every worker process counts its own share, and
prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set up by
gunicorn.conf.py) adds them up at scrape time.

Readable without credentials by default, like a health check; with
METRICS_TOKEN set it needs `Authorization: Bearer <METRICS_TOKEN>`.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Blueprint, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Unauthorized

from web import current, db, task_store

bp = Blueprint("metrics", __name__)

CLAIMS = Counter("web_claims", "Tasks claimed (a new attempt each)", ["integration"])
REPORTS = Counter("web_reports", "Reports judged by the task store, by outcome and refusal reason",
                  ["integration", "kind", "outcome", "reason"])
LONG_POLLS = Gauge("web_long_polls_waiting", "Long polls (fetch or claim) waiting for work now", ["integration"],
                   multiprocess_mode="livesum")
PRUNED = Counter("web_pruned_tasks", "Finished tasks deleted by the periodic prune, with their events (RETENTION_DAYS)")


def count_report(integration: str, kind: str, outcome: str, reason: str = "") -> None:
    """One judged report: outcome is accepted, duplicate or refused (with its reason code)."""
    REPORTS.labels(integration, kind, outcome, reason).inc()
    if kind == "claim" and outcome == "accepted":
        CLAIMS.labels(integration).inc()


@contextmanager
def waiting(integration: str) -> Iterator[None]:
    """Count a long poll as waiting while the block runs."""
    gauge = LONG_POLLS.labels(integration)
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()


class TaskCounts(Collector):
    """Tasks by status per integration and the oldest pending task's age, read when scraped."""

    def collect(self):
        by_status = GaugeMetricFamily("web_tasks", "Tasks by status", labels=["integration", "status"])
        oldest = GaugeMetricFamily("web_oldest_pending_age_seconds", "Age of the oldest pending task (0: none)",
                                   labels=["integration"])
        conn, now = db.get_db(), time.time()
        for table in current.tables():
            for status, count in task_store.count_by_status(conn, table).items():
                by_status.add_metric([table.integration, status], count)
            created = task_store.oldest_pending_created_at(conn, table)
            oldest.add_metric([table.integration], 0 if created is None else max(0.0, now - created))
        yield by_status
        yield oldest


@bp.get("/metrics")
def metrics():
    token = current_app.extensions["settings"].get("components.metrics.token")
    if token:
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, f"Bearer {token}".encode()):
            raise Unauthorized("Missing or wrong metrics token", www_authenticate=WWWAuthenticate("bearer"))
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:  # one process (flask run, tests): its own counters are the whole story
        for collector in (CLAIMS, REPORTS, LONG_POLLS, PRUNED):
            registry.register(collector)
    registry.register(TaskCounts())
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
