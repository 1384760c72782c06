"""The processor's claims whose start is still under way, and their renewal (docs/design.md §4.8).

A claim the web process has not heard about for `stuckTimeoutSeconds` is
rescued as stuck: another claim, a new attempt. That is right when the
processor that made it died, and wrong when it lives and its start is only
waiting: Temporal down longer than the timeout (the start is held and retried),
or a server so slow that a batch's last starts come late. So while a claim is
held here, a `held` report renews it every third of the timeout (the web
process tells the timeout in each claim answer). A processor that dies or stops
renews nothing, and its claims are rescued as before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from integrations import PullModeConfig
from integrations.shared.providers import json_body

RENEW_FRACTION = 3  # renewed every third of the stuck timeout: two renewals may fail before it runs out
MAX_TICK_SECONDS = 5.0
MIN_TICK_SECONDS = 0.2
MAX_ITEMS = 100  # the web process's limit per batch report


class HeldClaims:
    """(task id, attempt) per integration, from the claim's answer until its start ends; safe across threads."""

    def __init__(self, session: Callable[[], requests.Session], stopping: threading.Event,
                 log: Callable[..., None], http_timeout: tuple[float, float]):
        self.session, self.stopping, self.log, self.http_timeout = session, stopping, log, http_timeout
        self._lock = threading.Lock()
        self._held: dict[str, dict[tuple[str, int], float]] = {}  # integration -> claim -> last renewed (monotonic)
        self._timeout: dict[str, float] = {}  # integration -> its stuck timeout, as its last claim answer said

    def hold(self, integration: str, claims: list[tuple[str, int]], at: float, stuck_timeout: Any) -> None:
        """Claims just made (answered at `at`, monotonic); `stuck_timeout` is the answer's (absent: an
        older web process, which has no renewal either)."""
        with self._lock:
            if isinstance(stuck_timeout, (int, float)) and not isinstance(stuck_timeout, bool) and stuck_timeout > 0:
                self._timeout[integration] = float(stuck_timeout)
            held = self._held.setdefault(integration, {})
            for claim in claims:
                held[claim] = at

    def release(self, integration: str, task_id: str, attempt: int) -> None:
        """The claim's start ended (started, failed, or left to the stuck rescue at stop): renew it no more."""
        with self._lock:
            self._held.get(integration, {}).pop((task_id, attempt), None)

    def count(self) -> int:
        with self._lock:
            return sum(len(held) for held in self._held.values())

    def due(self, integration: str, now: float) -> list[tuple[str, int]]:
        """The integration's claims last renewed a third of its stuck timeout ago or longer."""
        with self._lock:
            timeout = self._timeout.get(integration)
            if timeout is None:
                return []
            every = timeout / RENEW_FRACTION
            return [claim for claim, renewed in self._held.get(integration, {}).items() if now - renewed >= every]

    def tick(self) -> float:
        """How often to look for due claims: a sixth of the shortest stuck timeout, within bounds."""
        with self._lock:
            shortest = min(self._timeout.values(), default=RENEW_FRACTION * 2 * MAX_TICK_SECONDS)
        return max(MIN_TICK_SECONDS, min(MAX_TICK_SECONDS, shortest / (2 * RENEW_FRACTION)))

    def run(self, pull_configs: list[PullModeConfig]) -> None:
        """Renew due claims until the processor stops (then its claims are left to the stuck rescue)."""
        while not self.stopping.wait(self.tick()):
            for pull in pull_configs:
                try:
                    self.renew(pull)
                except Exception as exc:  # the loop must survive anything; the next tick tries again
                    self.log("claim renewal failed; retrying", level=logging.WARNING, integration=pull.integration,
                             error=f"{type(exc).__name__}: {exc}"[:300])

    def renew(self, pull: PullModeConfig) -> int:
        """One `held` report per due claim, in batches; how many the web process renewed."""
        renewed = 0
        due = self.due(pull.integration, time.monotonic())
        for start in range(0, len(due), MAX_ITEMS):
            batch = due[start:start + MAX_ITEMS]
            sent = time.monotonic()  # a renewal counts from when it was sent: the web process stamps it later
            response = self.session().post(pull.internal_apis.report_task_event, timeout=self.http_timeout, json=[
                {"apiCallId": task_id, "attempt": attempt, "status": "held"} for task_id, attempt in batch])
            results = json_body(response).get("results")
            if response.status_code != 200 or not isinstance(results, list) or len(results) != len(batch):
                raise RuntimeError(f"{pull.internal_apis.report_task_event} answered {response.status_code}")
            renewed += self._settle(pull.integration, batch, results, sent)
        return renewed

    def _settle(self, integration: str, batch: list[tuple[str, int]], results: list, sent: float) -> int:
        renewed = 0
        with self._lock:
            held = self._held.get(integration, {})
            for claim, result in zip(batch, results, strict=True):
                if claim not in held:
                    continue  # its start ended meanwhile
                if isinstance(result, dict) and result.get("success") is True:
                    held[claim] = sent
                    renewed += not result.get("duplicate")
                else:  # a newer attempt took the task (this processor was thought dead), or it is gone
                    del held[claim]
                    self.log("a held claim was taken over; its start will find the newer attempt",
                             level=logging.WARNING, integration=integration, task=claim[0], attempt=claim[1],
                             error=str(result.get("error") if isinstance(result, dict) else result)[:200])
        return renewed
