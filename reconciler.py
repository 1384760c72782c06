"""The reconciler: heals tasks whose workflow is gone (docs/design.md §3, §4.7).

A task Temporal owns (processing, or queued with its workflow start confirmed)
is never rescued as stuck: its workflow reports for it. If that workflow was
terminated in the Temporal UI, or lost with Temporal's state, nothing ever
would. So the reconciler pages through such tasks unchanged for
RECONCILE_AFTER_SECONDS (a cursor walks all of them in turn, so a backlog of
long video jobs cannot starve the rest), describes each one's workflow, and
reports `failed` (retryable, at the task's attempt) when the run is closed
without a final report or not found. The processor then claims the task again.

Like the processor, it holds no database connection (HTTP and Temporal only).
Its reports are fenced by the attempt like any other, so any number of
processors may run it at once; its describe calls are capped per minute. A
Temporal that does not answer proves nothing: only NOT_FOUND or a closed run
counts as gone. It runs inside the processor (RECONCILE_ENABLED, on by default).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

import logs
from integrations import PullModeConfig
from integrations.shared.public_errors import WORKFLOW_GONE
from settings import Config

HTTP_TIMEOUT = (3.05, 10)
DESCRIBE_TIMEOUT_SECONDS = 15.0
PAGE_SIZE = 50
log = logging.getLogger("reconciler")


@dataclass(frozen=True)
class ReconcilerSettings:
    enabled: bool = True
    after_seconds: int = 300
    interval_seconds: float = 30.0
    calls_per_minute: int = 120

    @classmethod
    def from_config(cls, config: Config) -> ReconcilerSettings:
        section = config.section("components.asyncTask.reconciler")
        return cls(enabled=bool(section.get("enabled", True)), after_seconds=int(section.get("afterSeconds", 300)),
                   interval_seconds=float(section.get("intervalSeconds", 30)),
                   calls_per_minute=int(section.get("callsPerMinute", 120)))


class RateLimit:
    """At most `per_minute` permits a minute, spaced evenly: Temporal sees a steady trickle, never a burst."""

    def __init__(self, per_minute: int):
        self.spacing = 60.0 / per_minute
        self.next = time.monotonic()

    def wait(self, stopping: threading.Event) -> bool:
        """Until the next permit (True), or False if `stopping` is set first."""
        delay = self.next - time.monotonic()
        if delay > 0 and stopping.wait(delay):
            return False
        self.next = max(self.next, time.monotonic()) + self.spacing
        return not stopping.is_set()


class Reconciler:
    """Walks the dispatched tasks of every integration, one page at a time, and fails those whose run is gone."""

    def __init__(self, settings: ReconcilerSettings, bridge: Any, pull_configs: list[PullModeConfig],
                 session: Callable[[], requests.Session], metrics: Any, stopping: threading.Event):
        self.settings, self.bridge, self.pull_configs = settings, bridge, pull_configs
        self.session, self.metrics, self.stopping = session, metrics, stopping
        self.limit = RateLimit(settings.calls_per_minute)
        self.cursors: dict[str, str | None] = {}

    def run(self) -> None:
        """Until stopped: a pass over every integration's dispatched tasks, then a pause."""
        while not self.stopping.is_set():
            try:
                passed = self.step()
            except Exception as exc:  # the loop must survive anything; Temporal or the web process may be down
                logs.event(log, "reconcile step failed", logging.WARNING, error=f"{type(exc).__name__}: {exc}"[:300])
                passed = True
            if passed:
                self.stopping.wait(self.settings.interval_seconds)

    def step(self) -> bool:
        """One page per integration; True once every integration's pass has reached its end."""
        self.bridge.ensure_healthy()  # no answer from Temporal proves nothing: look again later
        ended = [self.page(pull) for pull in self.pull_configs]
        return all(ended)

    def page(self, pull: PullModeConfig) -> bool:
        """Look at the next page of `pull`'s dispatched tasks; True if it was the last one."""
        params = {"olderThanSeconds": self.settings.after_seconds, "limit": PAGE_SIZE}
        if self.cursors.get(pull.integration):
            params["after"] = self.cursors[pull.integration]
        response = self.session().get(pull.internal_apis.fetch_dispatched_tasks, params=params, timeout=HTTP_TIMEOUT)
        if response.status_code != 200:
            raise RuntimeError(f"fetchDispatchedTasks answered {response.status_code}: {response.text[:200]}")
        answer = response.json()
        for task in answer.get("tasks") or []:
            if not self.limit.wait(self.stopping):
                return True
            self.check(pull, task)
        self.cursors[pull.integration] = answer.get("next")
        return answer.get("next") is None

    def check(self, pull: PullModeConfig, task: dict) -> str:
        """Describe the task's workflow; if its run is gone, report the task failed. Returns what was found."""
        workflow_id = pull.build_workflow_id(task)
        found = self.bridge.call(self.describe(workflow_id), timeout=DESCRIBE_TIMEOUT_SECONDS)
        self.metrics.reconcile_checks.labels(pull.integration).inc()
        if found == "RUNNING":
            return found
        error = WORKFLOW_GONE + (f"{workflow_id} was not found in Temporal" if found == "NOT_FOUND" else
                                 f"{workflow_id} is {found.lower()} without a final report")
        error += f" (task {task['status']} at attempt {task['attempts']}; the reconciler failed it so it runs again)"
        body = {"apiCallId": task["id"], "status": "failed", "attempt": task["attempts"], "error": error,
                "retryable": True}
        response = self.session().post(pull.internal_apis.report_task_event, json=body, timeout=HTTP_TIMEOUT)
        if response.status_code == 200:
            self.metrics.reconciled.labels(pull.integration, found.lower()).inc()
            logs.event(log, "workflow gone; task failed for a retry", logging.WARNING, task=task["id"],
                       attempt=task["attempts"], workflow=workflow_id, found=found)
        elif response.status_code != 409:  # 409: the task moved on meanwhile, nothing to heal
            raise RuntimeError(f"report failed answered {response.status_code}: {response.text[:200]}")
        return found

    async def describe(self, workflow_id: str) -> str:
        """The latest run's status name (RUNNING, TERMINATED, ...) or NOT_FOUND."""
        from temporalio.service import RPCError, RPCStatusCode

        try:
            description = await self.bridge.client.get_workflow_handle(workflow_id).describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return "NOT_FOUND"
            raise
        return description.status.name if description.status is not None else "RUNNING"
