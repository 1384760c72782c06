"""The processor's claims whose start is under way, renewed so the stuck rescue leaves them (docs/design.md §4).

A claim the web process has not heard about for `stuckTimeoutSeconds` is
rescued as stuck: claimed again, with a new attempt. That is right when the
processor that made it died, and wrong when it lives and its start only waits:
Temporal down for longer than the timeout (the start is held and retried), or
a server so slow that a batch's last starts come late. So while a claim's start
is being tried, a `held` report renews it (the web process says the timeout in
each claim answer). A claim is renewed only while its start loop touches it
(a wedged loop renews nothing), and for at most MAX_HOLD_TIMEOUTS stuck
timeouts (a processor cut off from Temporal alone does not pin its claims
while others could start them). A processor that dies or stops renews
nothing, and its claims are rescued after the timeout as before.

Each round also sends the dispatch confirmations waiting to go: a started
claim is no longer renewed, and its confirmation must not wait for the poll
thread, which may be waiting for room to claim.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from integrations import PullModeConfig
from integrations.shared.providers import json_body

RENEW_FRACTION = 3  # renewed every third of the usable window: two renewals may fail before it runs out
STAMP_GRAIN_SECONDS = 1.0  # the web process stamps startedAt in whole seconds: a renewal buys (timeout - 1) s
TOUCHED_WITHIN_SECONDS = 30.0  # a start try lasts at most 10 s (rpc timeout), its retry pause 10 s
MAX_HOLD_TIMEOUTS = 12  # renewed for at most 12 stuck timeouts (an hour at the default 300 s)
MAX_TICK_SECONDS = 5.0
MIN_TICK_SECONDS = 0.2


def renewal_interval(timeout: float) -> float:
    """Seconds between a claim's renewals: a third of what a renewal buys (the timeout less the stamp grain)."""
    return max(0.0, timeout - STAMP_GRAIN_SECONDS) / RENEW_FRACTION


@dataclass
class Held:
    claimed: float  # monotonic, taken before the claim request went out
    renewed: float  # the last renewal that landed, counted from when it was sent
    touched: float  # the start loop's last try


class ClaimRenewals:
    """(task id, attempt) per integration, from the claim until its start ends; safe across threads."""

    def __init__(self, session: Callable[[], requests.Session], log: Callable[..., None],
                 http_timeout: tuple[float, float], max_items: int, confirm: Callable[[PullModeConfig], None]):
        self.session, self.log, self.http_timeout = session, log, http_timeout
        self.max_items, self.confirm = max_items, confirm
        self._lock = threading.Lock()
        self._held: dict[str, dict[tuple[str, int], Held]] = {}
        self._timeout: dict[str, float] = {}  # integration -> its stuck timeout, as its last claim answer said
        self._wake = threading.Event()  # a shorter timeout was learned: recompute the tick now
        self._stopped = threading.Event()

    # -- what the processor tells it --
    def hold(self, integration: str, claims: list[tuple[str, int]], at: float, stuck_timeout: Any) -> None:
        """Claims just made, by a request sent at `at` (monotonic); `stuck_timeout` is the answer's field
        (absent: an older web process, which has no renewal either)."""
        with self._lock:
            known = self._timeout.get(integration)
            if isinstance(stuck_timeout, (int, float)) and not isinstance(stuck_timeout, bool) and stuck_timeout > 0:
                self._timeout[integration] = float(stuck_timeout)
                if known is None or stuck_timeout < known:
                    self._wake.set()
            else:  # the web process that answered has no renewals (an older one, during a rolling deploy)
                self._timeout.pop(integration, None)
            held = self._held.setdefault(integration, {})
            for claim in claims:
                held[claim] = Held(at, at, at)

    def touch(self, integration: str, task_id: str, attempt: int, now: float | None = None) -> None:
        """The start loop tries this claim's start now."""
        with self._lock:
            held = self._held.get(integration, {}).get((task_id, attempt))
            if held is not None:
                held.touched = time.monotonic() if now is None else now

    def release(self, integration: str, task_id: str, attempt: int) -> None:
        """The claim's start ended (started, failed, or left to the stuck rescue at stop): renew it no more."""
        with self._lock:
            self._held.get(integration, {}).pop((task_id, attempt), None)

    def count(self) -> int:
        with self._lock:
            return sum(len(held) for held in self._held.values())

    # -- the renewer thread --
    def due(self, integration: str, now: float) -> list[tuple[str, int]]:
        """The integration's claims to renew now: a third of the window since the last renewal, touched by
        the start loop lately, and held for fewer than MAX_HOLD_TIMEOUTS stuck timeouts."""
        with self._lock:
            timeout = self._timeout.get(integration)
            if timeout is None or timeout <= STAMP_GRAIN_SECONDS:  # a renewal would buy nothing
                return []
            every = renewal_interval(timeout)
            return [claim for claim, held in self._held.get(integration, {}).items()
                    if now - held.renewed >= every and now - held.touched <= TOUCHED_WITHIN_SECONDS
                    and now - held.claimed < MAX_HOLD_TIMEOUTS * timeout]

    def tick(self) -> float:
        """How often to look for due claims: half the renewal interval of the shortest timeout, within bounds."""
        with self._lock:
            shortest = min(self._timeout.values(), default=None)
        if shortest is None:
            return MAX_TICK_SECONDS
        return max(MIN_TICK_SECONDS, min(MAX_TICK_SECONDS, renewal_interval(shortest) / 2))

    def run(self, pull_configs: list[PullModeConfig]) -> None:
        """Each tick: send waiting confirmations, renew due claims; until stop()."""
        while not self._stopped.is_set():
            self._wake.wait(self.tick())
            self._wake.clear()
            if self._stopped.is_set():
                return
            for pull in pull_configs:
                try:
                    self.confirm(pull)
                    self.renew(pull)
                except Exception as exc:  # the loop must survive anything; the next tick tries again
                    self.log("claim renewal failed; retrying", level=logging.WARNING, integration=pull.integration,
                             error=f"{type(exc).__name__}: {exc}"[:300])

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    def renew(self, pull: PullModeConfig) -> int:
        """One `held` report per due claim, in batches; how many the web process renewed."""
        renewed = 0
        due = self.due(pull.integration, time.monotonic())
        for start in range(0, len(due), self.max_items):
            batch = due[start:start + self.max_items]
            sent = time.monotonic()  # a renewal counts from when it was sent: the web process stamps it later
            response = self.session().post(pull.internal_apis.report_task_event, timeout=self.http_timeout, json=[
                {"apiCallId": task_id, "attempt": attempt, "status": "held"} for task_id, attempt in batch])
            results = json_body(response).get("results")
            if response.status_code == 400:  # a web process from before renewals (its claim answers stop them)
                raise RuntimeError("the web process does not take `held` reports; these claims were not renewed")
            if response.status_code != 200 or not isinstance(results, list) or len(results) != len(batch):
                raise RuntimeError(f"{pull.internal_apis.report_task_event} answered {response.status_code}")
            renewed += self._settle(pull.integration, batch, results, sent)
        return renewed

    def _settle(self, integration: str, batch: list[tuple[str, int]], results: list, sent: float) -> int:
        renewed, lost = 0, []
        with self._lock:
            held = self._held.get(integration, {})
            for claim, result in zip(batch, results, strict=True):
                if claim not in held:
                    continue  # its start ended meanwhile
                if isinstance(result, dict) and result.get("success") is True:
                    if result.get("status") != "queued":  # it moved on (cancelled, failed, handed back): done
                        del held[claim]
                        continue
                    held[claim].renewed = sent
                    renewed += not result.get("duplicate")
                else:  # a newer attempt took the task (this processor was thought dead), or it is gone
                    del held[claim]
                    lost.append((claim, result))
        for (task_id, attempt), result in lost:
            self.log("a held claim was taken over; its start will find the newer attempt", level=logging.WARNING,
                     integration=integration, task=task_id, attempt=attempt,
                     error=str(result.get("error") if isinstance(result, dict) else result)[:200])
        return renewed
