"""The processor: a stateless pull loop that claims tasks and starts their workflows.

    python processor.py            (the Procfile's `processor` line)

It speaks HTTP to the web process and gRPC to Temporal, nothing else: no
database module is imported here (docs/design.md §1). It claims batches with
`claimPendingTasks` (the web process picks and claims the oldest claimable
tasks in one transaction, so processors never collide) and starts each workflow
`{integration}:{taskId}` with the attempt its claim returned. Only while Temporal
was seen up within the last 250 ms does it let the claim itself wait for work
(one round trip from commit to claim); otherwise it waits with a long-polled
`fetchPendingTasks`, which claims nothing, then checks Temporal, then claims.
While a backlog lasts it claims again at once, doubling the batch up to 100.
The temporalio client lives on its own asyncio loop in a background thread; the
poll threads (one per integration) reach it with run_coroutine_threadsafe.

Safety (docs/design.md §4): nothing is claimed while Temporal is unreachable, and a
claim that lands just as it goes down is held and started when it is back (no
attempt is burned by an outage); an "already started" run of an earlier
attempt is terminated and replaced; any other start failure is reported as
`failed`.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NamedTuple

import requests
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

import logs
import metrics
from claim_renewals import ClaimRenewals
from integrations import PullModeConfig, WorkflowInput, load_integrations
from integrations.shared.providers import json_body
from reconciler import Reconciler, ReconcilerSettings
from settings import Config, ConfigError, load_config, require_secret, temporal_connection

HTTP_TIMEOUT = (3.05, 10)  # (connect, read) seconds for every call to the web process
START_TIMEOUT = timedelta(seconds=10)
MAX_BACKOFF_SECONDS = 10.0
MAX_BACKOFF_BASE_SECONDS = 1.0  # the first back-off after a failed poll, whatever the long poll's wait
MIN_IDLE_ROUND_MS = 1000  # an idle wait that came back at once (a web process shutting down, an old one): pause
HEALTHY_FOR_SECONDS = 0.25  # how long a start or health check proves Temporal is up, for claiming
IDLE_HEALTHY_FOR_SECONDS = 5.0  # before an idle wait: a processor that cannot reach Temporal holds no long poll
CLAIM_WAIT_MARGIN_MS = 10  # of that proof, kept back for the claim request's own transit
MIN_CLAIM_WAIT_MS = 20  # a shorter proof is not worth a long-polled claim: wait with a fetch instead
MAX_BATCH = 100  # the web process's limit per claim and per batch report
MAX_DECLINED_WAIT_MS = 45_000  # the longest a declined long poll waits here (150 % of the server's longest wait)
REPORT_RETRIES = 4

log = logging.getLogger("processor")


def declined_for(answer: dict) -> float:
    """Seconds to wait client-side because the web process declined to hold a long poll (too many wait at
    once: it answered at once, with `retryAfterMs`; docs/design.md §5); 0 if it did not decline."""
    hint = answer.get("retryAfterMs")
    if isinstance(hint, bool) or not isinstance(hint, (int, float)) or not hint > 0:
        return 0.0
    return min(hint, MAX_DECLINED_WAIT_MS) / 1000


@dataclass(frozen=True)
class ProcessorSettings:
    instance_id: str
    token: str
    temporal: dict[str, Any]  # Client.connect's keyword arguments (settings.temporal_connection)
    poll_interval_ms: int = 20_000
    batch_size: int = 10
    report_concurrency: int = 4
    max_in_flight: int = 50
    reconciler: ReconcilerSettings = ReconcilerSettings()

    @classmethod
    def from_config(cls, config: Config, instance_id: str | None = None) -> ProcessorSettings:
        return cls(
            instance_id=instance_id or default_instance_id(),
            token=require_secret(config, "components.asyncTask.internalApiToken"),
            temporal=temporal_connection(config),
            poll_interval_ms=int(config.get("components.asyncTask.pullMode.pollIntervalMs", 20_000)),
            batch_size=int(config.get("components.asyncTask.pullMode.batchSize", 10)),
            max_in_flight=int(config.get("components.asyncTask.pullMode.maxInFlight", 50)),
            reconciler=ReconcilerSettings.from_config(config),
        )


def default_instance_id() -> str:
    return f"processor-{os.environ.get('HOSTNAME') or uuid.uuid4().hex[:8]}"


def cancelled_meanwhile(results: Any) -> list[dict]:
    """Dispatch confirmations answered `cancelled`: the task was cancelled while its start was held (Temporal
    unreachable), so the run just started must be cancelled too, or it would make a provider job for nothing."""
    if not isinstance(results, list):
        return []
    return [{"id": r["apiCallId"], "attempt": r.get("attempt"), "status": "cancelled"} for r in results
            if isinstance(r, dict) and r.get("status") == "cancelled" and isinstance(r.get("apiCallId"), str)]


class TemporalUnavailable(Exception):
    """Temporal cannot be reached now; claim nothing until it can."""


class TemporalBridge:
    """The temporalio client on its own asyncio loop, callable from other threads."""

    def __init__(self, connection: dict[str, Any], connect: Callable | None = None):
        self.connection = connection
        self._connect = connect
        import temporalio.client  # noqa: F401 - imported now, not on the first task's latency path

        self.client = None
        self.connecting = asyncio.Lock()  # the poll threads and the reconciler may both ask at once
        self.last_success = float("-inf")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="temporal-loop", daemon=True)
        self.thread.start()

    def submit(self, coro) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro, timeout: float = 15.0) -> Any:
        return self.submit(coro).result(timeout)

    def ensure_healthy(self, fresh_for: float = HEALTHY_FOR_SECONDS) -> None:
        """Connect if needed and ask the frontend for its health; raise TemporalUnavailable if not.

        A start or check that succeeded within `fresh_for` seconds is proof enough: under load
        the health round trip is skipped (it is on every task's latency path).
        """
        if time.monotonic() - self.last_success < fresh_for:
            return
        try:
            self.call(self._ensure_healthy(), timeout=10)
        except Exception as exc:  # any failure here means: do not claim now
            from settings import describe_temporal_error  # names TLS problems plainly

            raise TemporalUnavailable(describe_temporal_error(exc)) from exc
        self.last_success = time.monotonic()

    def fresh_for(self) -> float:
        """Seconds left of the last proof that Temporal is up (negative once it is stale)."""
        return max(-1.0, HEALTHY_FOR_SECONDS - (time.monotonic() - self.last_success))

    def succeeded(self) -> None:
        """Record an RPC that reached Temporal."""
        self.last_success = time.monotonic()

    def unreachable(self) -> None:
        """Temporal did not answer: the next claim must wait for a fresh health check."""
        self.last_success = float("-inf")

    async def _ensure_healthy(self) -> None:
        from temporalio.client import Client

        async with self.connecting:
            if self.client is None:
                self.client = await (self._connect or Client.connect)(**self.connection)
        if not await self.client.service_client.check_health(timeout=timedelta(seconds=3)):
            raise TemporalUnavailable("health check answered not serving")

    def close(self) -> None:
        self.client = None  # the Rust core closes the connection when the client is dropped
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


class StartResult:
    STARTED = "started"
    ALREADY_RUNNING = "already running (same or newer attempt)"
    REPLACED = "started after terminating an earlier attempt's run"


async def start_workflow(client, pull: PullModeConfig, task: dict, attempt: int) -> str:
    """Start the task's workflow idempotently for `attempt` (docs/design.md §4.3-§4.5)."""
    from temporalio.common import WorkflowIDReusePolicy
    from temporalio.exceptions import WorkflowAlreadyStartedError
    from temporalio.service import RPCError, RPCStatusCode

    workflow_id = pull.build_workflow_id(task)
    params = pull.build_workflow_params({**task, "attempt": attempt})
    replaced = False
    for _ in range(5):
        try:
            await client.start_workflow(
                pull.workflow_name, params, id=workflow_id, task_queue=pull.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY, rpc_timeout=START_TIMEOUT,
            )
            return StartResult.REPLACED if replaced else StartResult.STARTED
        except WorkflowAlreadyStartedError:
            handle = client.get_workflow_handle(workflow_id)
            description = await handle.describe()
            status = description.status.name if description.status is not None else "RUNNING"
            if status == "COMPLETED":  # the reuse policy keeps only a completed run from running again
                raise RuntimeError(f"workflow {workflow_id} already completed; it cannot run again") from None
            if status != "RUNNING":
                # The earlier run closed (failed) between our start and this look: a task's workflow
                # reports `failed` just before it ends, and the retry's claim can be that quick.
                continue
            if await _started_attempt(client, handle) >= attempt:
                return StartResult.ALREADY_RUNNING
            try:
                await handle.terminate(reason=f"superseded by attempt {attempt}")
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:  # NOT_FOUND: it closed on its own meanwhile
                    raise
            replaced = True
    raise RuntimeError(f"workflow {workflow_id} kept being started by someone else")


async def _started_attempt(client, handle) -> int:
    """The attempt a run was started with: its first history event carries its WorkflowInput."""
    async for event in handle.fetch_history_events():
        payloads = event.workflow_execution_started_event_attributes.input.payloads
        if not payloads:
            return 0
        [started] = client.data_converter.payload_converter.from_payloads(payloads[:1], [WorkflowInput])
        return started.attempt
    return 0


class InFlight:
    """Claimed tasks whose workflow start has not finished: at most `bound` of them, one count, one lock.

    Why a bound: a claimed task that is not started yet is hidden from every other
    processor (its claim is renewed while its start is tried), and each one is a start Temporal must serve.
    A poll thread reserves room before it claims (so two threads never overshoot),
    gives back what its claim did not use, and each finished start frees its slot.
    It waits for room for half the bound (or the whole batch, if smaller), so that a
    backlog is claimed in batches, not one task at a time. A thread that is about to
    wait for work reserves only its integration's share of the bound: slots held
    through a long poll must not starve another integration's backlog.
    """

    def __init__(self, bound: int):
        self.bound = max(1, bound)
        self._count = 0
        self._changed = threading.Condition()

    def reserve(self, wanted: int, stopping: threading.Event) -> int:
        """Wait for room, then hold up to `wanted` slots; how many (0 if the processor is stopping)."""
        enough = min(wanted, max(1, self.bound // 2))
        with self._changed:
            while self.bound - self._count < enough and not stopping.is_set():
                self._changed.wait(0.1)
            if stopping.is_set():
                return 0
            taken = min(wanted, self.bound - self._count)
            self._count += taken
            return taken

    def release(self, slots: int = 1) -> None:
        if slots:
            with self._changed:
                self._count -= slots
                self._changed.notify_all()

    @property
    def held(self) -> int:
        """Slots held now: reserved for a claim, or claimed tasks whose start has not finished."""
        return self._count

    def wait_empty(self, timeout: float) -> bool:
        """Until every held slot is released (True), or `timeout` seconds pass."""
        with self._changed:
            return self._changed.wait_for(lambda: self._count == 0, timeout)


class Claimed(NamedTuple):
    """A claimed task, the attempt to start it with, and when the claim was answered (monotonic)."""

    task: dict
    attempt: int
    at: float


class ProcessorMetrics:
    """This processor's counts in its own Prometheus registry (PROCESSOR_METRICS_PORT); safe across threads."""

    NAMES = ("claimed", "started", "start_failed", "held", "poll_failures", "cancels_sent")

    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.counters = {
            "claimed": Counter("processor_claimed_tasks", "Tasks claimed", ["integration"], registry=registry),
            "started": Counter("processor_workflows_started", "Workflows started (or found running) for a claim",
                               ["integration"], registry=registry),
            "start_failed": Counter("processor_start_failures", "Starts that failed and were reported failed",
                                    ["integration"], registry=registry),
            "held": Counter("processor_held_starts", "Starts held while Temporal was unreachable",
                            ["integration"], registry=registry),
            "poll_failures": Counter("processor_poll_failures", "Polls that failed (web process or Temporal down)",
                                     ["integration"], registry=registry),
            "cancels_sent": Counter("processor_workflow_cancels", "Workflow cancels delivered to Temporal",
                                    ["integration"], registry=registry),
        }
        self.claim_to_started = Histogram(
            "processor_claim_to_started_seconds", "From a claim's answer to its workflow started", ["integration"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=registry)
        self.reconciled = Counter("processor_reconciled_tasks", "Tasks failed because their workflow was gone",
                                  ["integration", "finding"], registry=registry)
        self.reconcile_checks = Counter("processor_reconcile_checks", "Workflows the reconciler described",
                                        ["integration"], registry=registry)
        self.claims_in_start = Gauge("processor_claims_in_start",
                                     "Claims whose start is under way (renewed, so the stuck rescue leaves them)",
                                     registry=registry)

    def add(self, name: str, integration: str, amount: int = 1) -> None:
        self.counters[name].labels(integration).inc(amount)

    def snapshot(self) -> dict[str, int]:
        """Each count, summed over integrations."""
        return {name: int(sum(sample.value for family in counter.collect() for sample in family.samples
                              if sample.name.endswith("_total")))
                for name, counter in self.counters.items()}


class TaskProcessor:
    """Pull loop: wait for work, claim, start; one bad task never stops the loop."""

    def __init__(self, settings: ProcessorSettings, bridge: TemporalBridge | None = None):
        self.settings = settings
        self.bridge = bridge or TemporalBridge(settings.temporal)
        self.pull_configs: list[PullModeConfig] = []
        self.stopping = threading.Event()
        self.http = threading.local()
        self.reporters = ThreadPoolExecutor(settings.report_concurrency, thread_name_prefix="report")
        self.in_flight = InFlight(settings.max_in_flight)
        # Started workflows to confirm to the web process (which then never rescues their claims),
        # per integration; they ride along with the next claim request, or go alone when idle.
        # deque's append and popleft are atomic: the loop appends; the poll threads and the renewer take, each
        # item once (take_confirmations never checks then pops).
        self.confirmations: dict[str, collections.deque[tuple[str, int]]] = collections.defaultdict(collections.deque)
        self.threads: list[threading.Thread] = []
        # Poll threads inside a wait that claims nothing (wait_with_fetch): stopping need not wait for them.
        self.idle_waiting: set[str] = set()
        self.metrics = ProcessorMetrics()
        self.reconciler: threading.Thread | None = None
        # Claims whose start is under way, renewed so the stuck rescue (for a dead processor's) leaves them alone.
        self.renewals = ClaimRenewals(self.session, self.log, HTTP_TIMEOUT, MAX_BATCH, self.confirm_dispatches)
        self.metrics.claims_in_start.set_function(self.renewals.count)
        self.renewer: threading.Thread | None = None

    @property
    def stats(self) -> dict[str, int]:
        return self.metrics.snapshot()

    @property
    def failures(self) -> int:
        """Failed polls so far (all integrations)."""
        return self.metrics.snapshot()["poll_failures"]

    # -- lifecycle --
    def load(self, pull_configs: list[PullModeConfig]) -> None:
        """Take the enabled integrations' pull configs."""
        self.pull_configs = [p for p in pull_configs if p.enabled]

    def start(self, pull_configs: list[PullModeConfig]) -> None:
        """One poll loop per integration, so a quiet one never delays a busy one."""
        self.load(pull_configs)
        self.log("starting", integrations=",".join(p.integration for p in self.pull_configs),
                 temporal=self.settings.temporal.get("target_host"), batch=self.settings.batch_size,
                 wait_ms=self.settings.poll_interval_ms)
        self.threads = [threading.Thread(target=self.run, args=(pull,), name=f"poll-{pull.integration}",
                                         daemon=True) for pull in self.pull_configs]
        for thread in self.threads:
            thread.start()
        self.start_renewal()
        if self.settings.reconciler.enabled:
            reconciler = Reconciler(self.settings.reconciler, self.bridge, self.pull_configs, self.session,
                                    self.metrics, self.stopping)
            self.reconciler = threading.Thread(target=reconciler.run, name="reconciler", daemon=True)
            self.reconciler.start()

    def start_renewal(self) -> None:
        """Renew the claims whose start is under way (claim_renewals.py), until the processor has stopped."""
        self.renewer = threading.Thread(target=self.renewals.run, args=(self.pull_configs,), name="renewer",
                                        daemon=True)
        self.renewer.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming, finish starting what was claimed, close the Temporal connection."""
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for thread in [*self.threads, *([self.reconciler] if self.reconciler else [])]:
            # A thread in an idle long poll (up to POLL_INTERVAL_MS) claims nothing when it comes back: it is
            # not waited for. Any other is finishing a claim or a start, which must be seen through.
            while thread.is_alive() and thread.name not in self.idle_waiting and time.monotonic() < deadline:
                thread.join(0.05)
        self.in_flight.wait_empty(timeout)
        self.renewals.stop()  # only now: the starts seen through above were renewed meanwhile
        if self.renewer is not None:  # woken at once; only a round's request under way is waited for
            self.renewer.join(HTTP_TIMEOUT[0] + HTTP_TIMEOUT[1])
        for pull in self.pull_configs:
            self.confirm_dispatches(pull)
        self.reporters.shutdown(wait=True)
        self.bridge.close()
        self.log("stopped", **self.stats)

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self.threads)

    def run(self, pull: PullModeConfig) -> None:
        """Poll one integration until stopped; back off (capped) while polls fail."""
        failures = 0
        limit = self.settings.batch_size
        while not self.stopping.is_set():
            try:
                backlog = limit > self.settings.batch_size
                busy = self.poll(pull, wait_ms=0 if backlog else self.settings.poll_interval_ms, limit=limit)
                # A backlog: double the batch (up to MAX_BATCH) so each request and claim
                # transaction carries more; back to the configured size once it drains.
                limit = min(MAX_BATCH, limit * 2) if busy else self.settings.batch_size
                failures = 0
                continue
            except TemporalUnavailable as exc:
                self.log("temporal unavailable; claiming nothing", level=logging.WARNING, error=str(exc)[:200])
            except Exception as exc:  # the loop must survive anything
                self.log("poll failed", level=logging.WARNING, integration=pull.integration,
                         error=f"{type(exc).__name__}: {exc}"[:300])
            failures += 1
            self.metrics.add("poll_failures", pull.integration)
            limit = self.settings.batch_size
            self.stopping.wait(self.backoff(failures))

    def backoff(self, failures: int) -> float:
        base = min(MAX_BACKOFF_BASE_SECONDS, max(self.settings.poll_interval_ms / 1000, 0.1))
        return min(MAX_BACKOFF_SECONDS, base * 2 ** min(failures - 1, 10))

    # -- one poll --
    def run_once(self) -> bool:
        """Poll every integration once without waiting; True if any returned a full batch."""
        return any([self.poll(pull, wait_ms=0) for pull in self.pull_configs])

    def poll(self, pull: PullModeConfig, wait_ms: int, limit: int | None = None) -> bool:
        """Wait (up to `wait_ms`, on the server) for work, claim a batch and start it; True if it was full."""
        wanted = limit or self.settings.batch_size
        if wait_ms:  # about to wait for work: hold no more than this integration's share meanwhile
            wanted = min(wanted, max(1, self.in_flight.bound // max(1, len(self.pull_configs))))
            if self.claim_wait_ms(wait_ms) is None:
                # No fresh proof that Temporal is up: wait for work with a fetch that claims nothing (holding
                # no in-flight slot, so stopping need not wait for it), then prove Temporal up and claim.
                if not self.wait_with_fetch(pull, wait_ms) or self.stopping.is_set():
                    return False
                wait_ms = 0
        room = self.in_flight.reserve(wanted, self.stopping)
        if not room:
            return False
        claimed: list[Claimed] = []
        try:
            claimed = self.claim_when_safe(pull, wait_ms, room)
        finally:
            self.in_flight.release(room - len(claimed))  # the claimed keep their slots until started
        self.dispatch(pull, claimed)
        return len(claimed) >= room

    def claim_when_safe(self, pull: PullModeConfig, wait_ms: int, limit: int) -> list[Claimed]:
        """Claim up to `limit` tasks, waiting up to `wait_ms` for work, and never while Temporal may be down.

        No claim may land unless Temporal was seen healthy within HEALTHY_FOR_SECONDS
        (docs/design.md §4.8). Without a fresh proof `poll` has already waited, with a fetch (wait_with_fetch).
        """
        claim_wait = self.claim_wait_ms(wait_ms) if wait_ms else None
        if claim_wait is not None:
            # Temporal was proven up moments ago: wait inside the claim, for no longer than the
            # proof lasts, so a task arriving meanwhile is claimed in the same round trip.
            return self.claim(pull, limit, wait_ms=claim_wait)
        # Work is there (a backlog, or a fetch woke): prove Temporal up (a start moments ago will do), claim.
        self.bridge.ensure_healthy()
        return self.claim(pull, limit)

    def claim_wait_ms(self, wait_ms: int) -> int | None:
        """How long a claim may wait for work on the server: what is left of the proof that Temporal is up,
        less a margin for the request's transit (None if too little is left to be worth it)."""
        proof_ms = int(self.bridge.fresh_for() * 1000) - CLAIM_WAIT_MARGIN_MS
        return min(wait_ms, proof_ms) if proof_ms >= MIN_CLAIM_WAIT_MS else None

    def wait_with_fetch(self, pull: PullModeConfig, wait_ms: int) -> bool:
        """Wait up to `wait_ms` on the server, claiming nothing, until work appears; True if it did.

        Stopping does not wait for this (`idle_waiting`): the process may exit while the request is out."""
        # Starts already made are confirmed first, whatever Temporal's state now: unconfirmed, their claims
        # would be rescued as stuck and started again. And no confirmation is held while this waits.
        if self.confirmations[pull.integration]:
            self.confirm_dispatches(pull)
        # Wait only while Temporal answers: a processor that cannot reach it (one host's network, a bad
        # certificate) would hold one of the web process's few long-poll slots and could not claim what it woke
        # for, while a healthy processor it crowded out waits out its decline (raises TemporalUnavailable).
        self.bridge.ensure_healthy(IDLE_HEALTHY_FOR_SECONDS)
        if self.in_flight.held:
            # Starts still running will queue confirmations (and a cancel asked for meanwhile rides back on
            # them): come back within MIN_IDLE_ROUND_MS to send them, not after the whole idle wait.
            wait_ms = min(wait_ms, MIN_IDLE_ROUND_MS)
        name = threading.current_thread().name
        self.idle_waiting.add(name)
        try:
            if self.stopping.is_set():
                return False
            started = time.monotonic()
            if self.fetch_pending_tasks(pull, wait_ms, limit=1):
                return True  # tasks, or cancels to deliver (the claim takes both)
            waited = time.monotonic() - started  # on the server, or here if it declined to hold the poll
            floor = min(wait_ms, MIN_IDLE_ROUND_MS) / 1000
            if waited < floor:
                # It came back at once without a hint (a web process shutting down ends its waits; an older
                # one may not wait at all): pause briefly rather than spin.
                self.stopping.wait(floor - waited)
            return False
        finally:
            self.idle_waiting.discard(name)

    def fetch_pending_tasks(self, pull: PullModeConfig, wait_ms: int = 0, limit: int | None = None) -> list[dict]:
        """Claimable tasks; with `wait_ms`, a long poll. If the web process declines to hold it (it holds
        as many as it will), the wait happens here instead, for as long as it says (interrupted by stop).
        With no task but cancels waiting to be delivered (`cancelsDue`), one placeholder: go and claim."""
        params = {"limit": limit or self.settings.batch_size}
        if wait_ms:
            params["waitMs"] = wait_ms
        timeout = (HTTP_TIMEOUT[0], HTTP_TIMEOUT[1] + wait_ms / 1000)
        response = self.session().get(pull.internal_apis.fetch_pending_tasks, params=params, timeout=timeout)
        if response.status_code != 200:
            raise RuntimeError(f"fetchPendingTasks answered {response.status_code}: {response.text[:200]}")
        answer = response.json()
        tasks = answer.get("tasks") or []
        if not tasks and answer.get("cancelsDue") is True:
            return [{"cancelsDue": True}]
        if wait_ms and not tasks:
            self.stopping.wait(declined_for(answer))
        return tasks

    def dispatch(self, pull: PullModeConfig, claimed: list[Claimed]) -> None:
        """Hand the batch's starts to the Temporal loop, in one call; each holds its in-flight slot.

        The poll thread does not wait for them: it claims the next batch while
        they run (once there is room, see InFlight).
        """
        if claimed:
            self.bridge.submit(self.start_batch(pull, claimed))

    async def start_batch(self, pull: PullModeConfig, claimed: list[Claimed]) -> None:
        await asyncio.gather(*(self.start_and_finish(pull, claim) for claim in claimed))

    async def start_and_finish(self, pull: PullModeConfig, claim: Claimed) -> None:
        """Start one workflow; on failure report `failed` (off the loop, in a reporter thread)."""
        task, attempt = claim.task, claim.attempt
        try:
            outcome = await self.start_while_reachable(pull, task, attempt)
            if outcome is None:
                return
            self.bridge.succeeded()
            self.confirmations[pull.integration].append((task["id"], attempt))
            self.metrics.add("started", pull.integration)
            self.metrics.claim_to_started.labels(pull.integration).observe(time.monotonic() - claim.at)
            self.log("workflow started", task=task["id"], attempt=attempt,
                     workflow=pull.build_workflow_id(task), outcome=outcome)
        except Exception as exc:  # report it and carry on
            self.metrics.add("start_failed", pull.integration)
            from integrations.shared.public_errors import START_FAILED  # the text's prefix users are told by

            error = f"{START_FAILED}{type(exc).__name__}: {exc}"[:1000]
            self.log("workflow start failed", level=logging.ERROR, task=task["id"], attempt=attempt, error=error)
            await asyncio.get_running_loop().run_in_executor(
                self.reporters, self.report_failed, pull, task, attempt, error)
        finally:
            self.renewals.release(pull.integration, task["id"], attempt)
            self.in_flight.release()

    async def start_while_reachable(self, pull: PullModeConfig, task: dict, attempt: int) -> str | None:
        """Start the workflow; while Temporal is unreachable, keep the claim and try again.

        A claim can land just as Temporal goes down (the health check is up to
        HEALTHY_FOR_SECONDS old). Reporting that as `failed` would burn the attempt
        for an outage (docs/design.md §4.8), so the start is retried until Temporal
        answers; meanwhile no new claim is made. None if the processor stops
        first: the claim then stays unconfirmed, for the stuck rescue.
        """
        from temporalio.service import RPCError, RPCStatusCode

        for retry in itertools.count():
            self.renewals.touch(pull.integration, task["id"], attempt)
            try:
                return await start_workflow(self.bridge.client, pull, task, attempt)
            except RPCError as err:
                if err.status not in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
                    raise
                self.bridge.unreachable()
                if retry == 0:
                    self.metrics.add("held", pull.integration)
                    self.log("temporal unreachable; holding the claim and retrying its start", level=logging.WARNING,
                             task=task["id"], attempt=attempt, error=str(err)[:200])
            if await self.pause(min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** retry)):
                self.log("stopping while Temporal is unreachable; the claim is left for the stuck rescue",
                         level=logging.WARNING, task=task["id"], attempt=attempt)
                return None

    async def pause(self, seconds: float) -> bool:
        """Sleep on the loop for `seconds`, or less if the processor is stopping; True if it is."""
        deadline = time.monotonic() + seconds
        while not self.stopping.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(min(0.1, seconds))
        return self.stopping.is_set()

    def claim(self, pull: PullModeConfig, limit: int, wait_ms: int = 0) -> list[Claimed]:
        """Claim up to `limit` of the oldest claimable tasks in one request; (task, attempt) for each.

        The web process chooses and claims under one write lock (claimPendingTasks),
        so processors sharing a backlog never collide on a task. Pending dispatch
        confirmations ride in the same request. With `wait_ms` the web process holds
        an empty claim open until work arrives (see `claim_when_safe` for when that is safe); if it
        declines to (it holds as many waits as it will), the wait happens here instead, claiming nothing.
        """
        confirmations = self.take_confirmations(pull)
        body = {"limit": limit, "dispatched": confirmations}
        if wait_ms:
            body["waitMs"] = wait_ms
        timeout = (HTTP_TIMEOUT[0], HTTP_TIMEOUT[1] + wait_ms / 1000)
        sent = time.monotonic()  # the claims' renewals count from here: the web process stamps them later
        try:
            response = self.session().post(pull.internal_apis.claim_pending_tasks, json=body, timeout=timeout)
        except requests.RequestException as exc:
            # If the claims landed, the tasks wait in `queued` for the stuck rescue.
            self.give_back_confirmations(pull, confirmations)
            raise RuntimeError(f"claimPendingTasks failed: {exc}") from exc
        answer = json_body(response)
        tasks = answer.get("tasks")
        if not (response.status_code == 200 and answer.get("success") is True and isinstance(tasks, list)):
            self.give_back_confirmations(pull, confirmations)
            raise RuntimeError(f"claimPendingTasks answered {response.status_code}: {answer.get('error')}")
        self.metrics.add("claimed", pull.integration, len(tasks))
        cancels = (answer.get("cancels") or []) + cancelled_meanwhile(answer.get("dispatched"))
        if cancels:
            self.bridge.submit(self.cancel_workflows(pull, cancels))
        now = time.monotonic()
        claimed = [Claimed(task, int(task["attempt"]), now) for task in tasks]
        self.renewals.hold(pull.integration, [(c.task["id"], c.attempt) for c in claimed],
                           sent, answer.get("stuckTimeoutSeconds"))
        if wait_ms and not tasks and not cancels:
            self.stopping.wait(declined_for(answer))
        return claimed

    async def cancel_workflows(self, pull: PullModeConfig, cancels: list[dict]) -> None:
        """Ask Temporal to cancel each task's workflow (its latest run); the workflow cancels the provider's job
        where it can and reports `cancelled`. Not found (not started yet, or closed) and failures are left to
        the web process, which hands the cancel out again while the task stays active."""
        from temporalio.service import RPCError, RPCStatusCode

        for cancel in cancels:
            workflow_id = pull.build_workflow_id(cancel)
            try:
                await self.bridge.client.get_workflow_handle(workflow_id).cancel(rpc_timeout=START_TIMEOUT)
                self.metrics.add("cancels_sent", pull.integration)
                self.log("workflow cancel requested", task=cancel["id"], attempt=cancel["attempt"],
                         workflow=workflow_id)
            except RPCError as err:
                quiet = err.status == RPCStatusCode.NOT_FOUND  # not started yet, or closed: sent again if active
                self.log("workflow cancel not delivered; the web process hands it out again",
                         level=logging.DEBUG if quiet else logging.WARNING, task=cancel["id"],
                         workflow=workflow_id, error=str(err)[:200])
            except Exception as exc:  # the bridge not connected yet, or anything else: it is handed out again
                self.log("workflow cancel not delivered; the web process hands it out again",
                         level=logging.WARNING, task=cancel["id"], workflow=workflow_id,
                         error=f"{type(exc).__name__}: {exc}"[:200])

    def take_confirmations(self, pull: PullModeConfig, limit: int = MAX_BATCH) -> list[dict]:
        queue = self.confirmations[pull.integration]
        taken = []
        while len(taken) < limit:
            try:
                task_id, attempt = queue.popleft()
            except IndexError:  # empty, or another taker had the last one
                break
            taken.append({"apiCallId": task_id, "attempt": attempt})
        return taken

    def give_back_confirmations(self, pull: PullModeConfig, items: list[dict]) -> None:
        self.confirmations[pull.integration].extend((item["apiCallId"], item["attempt"]) for item in items)

    def confirm_dispatches(self, pull: PullModeConfig) -> None:
        """Tell the web process which claims' workflows are started (when no claim request is going out).

        A confirmation that cannot be delivered is kept for the next try; if the
        processor dies first, the claim is rescued after the stuck timeout and
        the rescue's start replaces the run (docs/design.md §4.3-§4.5).
        """
        while self.confirmations[pull.integration]:
            items = [{**item, "status": "queued"} for item in self.take_confirmations(pull)]
            try:
                response = self.session().post(pull.internal_apis.report_task_event, json=items,
                                               timeout=HTTP_TIMEOUT)
                delivered = response.status_code < 500
            except requests.RequestException:
                delivered = False
            if delivered and response.status_code == 200:
                cancels = cancelled_meanwhile(json_body(response).get("results"))
                if cancels:
                    self.bridge.submit(self.cancel_workflows(pull, cancels))
            if not delivered:
                self.give_back_confirmations(pull, items)
                self.log("dispatch confirmations not delivered; will retry", level=logging.WARNING,
                         count=len(items))
                return

    def report_failed(self, pull: PullModeConfig, task: dict, attempt: int, error: str) -> bool:
        """Report a start failure, with backoff; if it never lands the stuck rescue takes over."""
        body = {"apiCallId": task["id"], "status": "failed", "attempt": attempt, "error": error}
        for retry in range(REPORT_RETRIES):
            try:
                response = self.session().post(pull.internal_apis.report_task_event, json=body,
                                               timeout=HTTP_TIMEOUT)
                if response.status_code < 500:
                    return 200 <= response.status_code < 300
            except requests.RequestException:
                pass
            if self.stopping.wait(min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** retry)):
                break
        self.log("could not report the start failure; the stuck rescue will retry the task",
                 level=logging.ERROR, task=task["id"], attempt=attempt)
        return False

    # -- helpers --
    def session(self) -> requests.Session:
        """One keep-alive session per thread (requests sessions are not shared across threads)."""
        if not hasattr(self.http, "session"):
            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {self.settings.token}"
            self.http.session = session
        return self.http.session

    def log(self, message: str, level: int = logging.INFO, **fields: Any) -> None:
        logs.event(log, message, level, instance=self.settings.instance_id, **fields)


def main() -> int:
    logs.setup("processor")
    try:
        config = load_config()
        settings = ProcessorSettings.from_config(config)
        config.require("components.main.endpoint")
        processor = TaskProcessor(settings)
        metrics.serve(config, "components.metrics.processorPort", processor.metrics.registry)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr, flush=True)
        return 2
    stop_requested = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop_requested.set())  # handlers only set a flag
    processor.start([i.get_pull_mode_config() for i in load_integrations(config)])
    while not stop_requested.wait(0.2):
        if not processor.running:
            break
    processor.log("shutting down")
    processor.stop(timeout=8)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
