"""The one module that writes task state (docs/design.md §3, §4).

Every write runs inside `BEGIN IMMEDIATE` (so concurrent claimants, in any
process, queue for SQLite's write lock instead of racing), re-reads the task,
asks `decide()` what the report does, applies that as a conditional UPDATE
(status and attempts in the WHERE) and appends its event in the same
transaction. A refused report writes nothing.

On PostgreSQL (DATABASE_URL; `conn` is a web.pg.PgConn) the same functions keep
the same promises with row locks instead of one write lock: a READ COMMITTED
transaction first locks the task rows it will judge (`FOR UPDATE`, several in id
order, so two transactions never wait on each other in a cycle), and a claim picks
its tasks with one `ORDER BY ... LIMIT n FOR UPDATE SKIP LOCKED` per claimable kind,
each over its own partial index, so claimers never wait on or collide with each
other. `decide()` stays the only judge on both, and the fenced UPDATE stays as a
second fence. Only the SQL that differs is written twice (`_pg(conn)` branches).

It knows tables, not integrations: a `TaskTable` (built once per integration
from the configuration) names the table, its columns and its claim policy.

Exceptions (the HTTP layer maps them to status codes):

    TaskNotFound        404  no task with that id in this table
    TransitionRefused   409  the state machine refuses the report (incl. stale attempts)
    KeyReused           422  an Idempotency-Key seen with another request
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from settings import Config
from web.db import immediate
from web.db import is_postgres_conn as _pg

log = logging.getLogger("web.task_store")

STATUSES = ("pending", "queued", "processing", "completed", "failed", "cancelled")
# Progress reports (a workflow's, or an operator's `tasks fail`): the statuses each status may move to.
ALLOWED = {"queued": ("processing", "completed", "failed", "cancelled"),
           "processing": ("completed", "failed", "cancelled")}
FIELDS = ("id", "status", "attempts", "startedAt", "requestParams", "createdAt", "updatedAt", "externalId", "result",
          "error", "retryable", "dispatchedAt", "retryAt", "attemptsRefunded", "cancelRequestedAt", "cancelSentAt")
ACTIVE = ("queued", "processing")
CLAIM_FIELDS = ("id", "status", "startedAt", "attempts", "attemptsRefunded", "requestParams", "externalId",
                "createdAt")  # what fetchPendingTasks shows of a claimable task, and claimPendingTasks with more
CANCEL_RESEND_SECONDS = 30.0  # a cancel handed to a processor is handed out again while its task stays active
CANCEL_BATCH = 100
CANCELLED = {"status": "cancelled", "retryable": 0, "retryAt": None, "error": None}  # final: never claimed again
EXPIRE_BATCH = 100
PROBE_CANDIDATES = 10  # a blocked integration's probe is the least handed-back of its oldest claimable tasks
FOLD_SECONDS = 5.0  # PostgreSQL: a process folds the counters' delta rows at most this often (claims, creates)
CAP_LOCK = 7261847202  # PostgreSQL: advisory lock (seed of hashtextextended(table)): one capped claim at a time
KEY_LOCK = 7261847203  # PostgreSQL: advisory lock (seed of hashtextextended(scope:key)): per Idempotency-Key


IDEMPOTENCY_SECONDS = 86_400  # an Idempotency-Key answers the same task for this long
EXPIRED_KEYS_BATCH = 100  # expired keys deleted per create: the table stays about one day of creates


class TaskNotFound(Exception):
    """Task not found"""


class KeyReused(Exception):
    """This Idempotency-Key was used within 24 h for a different request."""


class TransitionRefused(Exception):
    """The state machine refuses this report; `reason` is a short code for metrics."""

    def __init__(self, message: str, reason: str = "not_allowed"):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class EntityMapping:
    """The table an integration writes and its column names, keyed by field (camelCase)."""

    table: str
    columns: dict[str, str] = field(default_factory=dict)

    def column(self, name: str) -> str:
        return self.columns.get(name, name)

    @classmethod
    def from_config(cls, section: dict) -> EntityMapping:
        columns = {name: section.get("columns", {}).get(name, name) for name in FIELDS}
        return cls(table=section["table"], columns=columns)


@dataclass(frozen=True)
class Policy:
    """How many claims a task gets, when a claim counts as abandoned, how long a retry waits,
    how many tasks may be active (queued + processing) at once (None: no cap), and how often a
    blocked integration lets one task through as a probe."""

    max_attempts: int = 5
    stuck_timeout_seconds: int = 300
    retry_base_seconds: float = 240.0
    retry_max_seconds: float = 3600.0
    max_active: int | None = None
    probe_seconds: float = 30.0

    def retry_delay(self, task_id: str, attempt: int) -> float:
        """How long a task whose attempt `attempt` failed waits before its next claim.

        Exponential (base · 2^(attempt−1), capped) with equal jitter: half of it fixed, half
        spread by a hash of the task and attempt, so tasks that failed together (an outage)
        do not all come back at once, and the same failure always gets the same delay.
        """
        ceiling = min(self.retry_max_seconds, self.retry_base_seconds * 2 ** min(max(attempt - 1, 0), 30))
        digest = hashlib.blake2b(f"{task_id}:{attempt}".encode(), digest_size=4).digest()
        return ceiling / 2 + ceiling / 2 * int.from_bytes(digest, "big") / 2**32


@dataclass(frozen=True)
class TaskTable:
    """One integration's tasks: where they live, the name their events carry, and the claim policy."""

    integration: str
    entity: EntityMapping
    policy: Policy = Policy()

    @classmethod
    def from_config(cls, config: Config, integration: str) -> TaskTable:
        """Built once per integration: `components.main.integrations.<name>` and the pull-mode policy."""
        pull = config.section("components.asyncTask.pullMode")
        cap = config.get(f"integrations.{integration}.maxActiveTasks")
        return cls(integration,
                   EntityMapping.from_config(config.section(f"components.main.integrations.{integration}")),
                   Policy(int(pull.get("maxAttempts", 5)), int(pull.get("stuckTimeoutSeconds", 300)),
                          float(pull.get("retryBaseSeconds", 240)), float(pull.get("retryMaxSeconds", 3600)),
                          None if cap is None else int(cap), float(pull.get("probeSeconds", 30))))


class ReportKind(enum.Enum):
    CLAIM = "claim"  # a processor takes the task: a new attempt
    DISPATCHED = "dispatch confirmation"  # the claim's workflow is started: Temporal owns the attempt
    HELD = "claim renewal"  # the claim's processor lives and still holds it: not stuck (its start waits)
    PROGRESS = "progress"  # processing / completed / failed, fenced by the attempt
    BLOCKED = "integration blocked"  # the provider refuses the account: the claim is handed back, fenced
    RETRY = "operator retry"  # a failed task becomes pending again (the CLI and the dashboard)
    CANCEL = "cancel request"  # a client or operator: pending → cancelled; an active task's workflow is cancelled


@dataclass(frozen=True)
class Report:
    """Something that may change a task; build it with the constructor of its kind."""

    kind: ReportKind
    status: str
    attempt: int | None = None
    external_id: str | None = None
    data: Any = None
    error: str | None = None
    retryable: bool = True

    @classmethod
    def claim(cls) -> Report:
        return cls(ReportKind.CLAIM, "queued")

    @classmethod
    def dispatched(cls, attempt: int) -> Report:
        return cls(ReportKind.DISPATCHED, "queued", attempt)

    @classmethod
    def held(cls, attempt: int) -> Report:
        return cls(ReportKind.HELD, "queued", attempt)

    @classmethod
    def progress(cls, status: str, attempt: int, external_id: str | None = None, data: Any = None,
                 error: str | None = None, retryable: bool = True) -> Report:
        return cls(ReportKind.PROGRESS, status, attempt, external_id, data, error, retryable)

    @classmethod
    def blocked(cls, attempt: int, error: str | None = None) -> Report:
        """The attempt's create met an account-level refusal (credits, quota, ...): `error` says which."""
        return cls(ReportKind.BLOCKED, "pending", attempt, error=error)

    @classmethod
    def operator_retry(cls) -> Report:
        return cls(ReportKind.RETRY, "pending")

    @classmethod
    def cancel(cls, reason: str | None = None) -> Report:
        """Cancel the task (`reason`: who asked, for the event)."""
        return cls(ReportKind.CANCEL, "cancelled", error=reason)


@dataclass(frozen=True)
class Decision:
    """What an accepted report does: the fields to set and the event to append (`event` None: none)."""

    changes: dict[str, Any]
    event: str | None = None
    note: str | None = None  # the event's error text when the change itself sets none
    duplicate: bool = False
    blocks: bool = False  # the integration is blocked by it (BLOCKED)
    unblocks: bool = False  # the provider accepted a job: a block of the integration ends


DUPLICATE = Decision({}, duplicate=True)


@dataclass(frozen=True)
class Outcome:
    status: str
    attempt: int
    duplicate: bool = False
    resumed: bool = False  # it ended a block of its integration
    cancelling: bool = False  # a cancel is asked of the task's workflow; the task is still active


def finished(task: dict) -> bool:
    """The task will not change again: completed, cancelled, or failed for good."""
    return task["status"] in ("completed", "cancelled") or (task["status"] == "failed" and not task["retryable"])


def spent(task: dict) -> int:
    """The attempts that count against the limit: claims, less those handed back by a blocked integration."""
    return task["attempts"] - (task.get("attemptsRefunded") or 0)


def decide(task: dict, report: Report, policy: Policy, now: float) -> Decision:
    """What `report` does to `task` (a pure judgement); raises TransitionRefused."""
    if report.kind is ReportKind.RETRY:
        if task["status"] != "failed":
            raise TransitionRefused(f"Cannot retry a {task['status']} task: only a failed task can be retried")
        # A cancel asked before the failure is spent: the operator wants the task to run again.
        return Decision({"status": "pending", "retryable": 1, "error": None, "retryAt": None,
                         "cancelRequestedAt": None, "cancelSentAt": None}, "pending", "retried by an operator")
    if report.kind is ReportKind.CANCEL:
        return _cancel(task, report, now)
    if report.kind is ReportKind.CLAIM:
        _check_claimable(task, policy, now)
        # externalId stays: the previous attempt's provider job, which the new one resumes if it is alive
        return Decision({"status": "queued", "attempts": task["attempts"] + 1, "startedAt": int(now),
                         "dispatchedAt": None, "result": None, "error": None, "retryAt": None}, "queued")
    _check_attempt(task, report)
    if report.kind is ReportKind.DISPATCHED:
        return _confirm_dispatch(task, now)
    if report.kind is ReportKind.HELD:
        return _renew_claim(task, now)
    if report.kind is ReportKind.BLOCKED:
        return _hand_back(task, report)
    return _progress(task, report, policy, now)


def _cancel(task: dict, report: Report, now: float) -> Decision:
    """A cancel request. A task that is not running (pending, or failed and waiting for its retry) is cancelled
    at once. An active one is marked: its workflow is cancelled through Temporal by a processor (take_cancels)
    and reports `cancelled` itself, after cancelling the provider's job where the provider allows. A finished
    task cannot be cancelled; a second request changes nothing."""
    current = task["status"]
    if current == "cancelled" or (current in ACTIVE and task["cancelRequestedAt"] is not None):
        return DUPLICATE
    if finished(task):
        raise TransitionRefused(f"Cannot cancel a {current} task: it is finished", "finished")
    if current in ACTIVE:
        return Decision({"cancelRequestedAt": now, "cancelSentAt": None})
    return Decision({**CANCELLED, "cancelRequestedAt": now}, "cancelled", report.error or "cancelled")


def _hand_back(task: dict, report: Report) -> Decision:
    """The attempt's create met a blocked integration: the task waits as pending again, at the head of
    the FIFO (createdAt is kept), and the attempt is refunded. No provider job exists for it."""
    current = task["status"]
    if current == "pending":
        return DUPLICATE  # the same report again (the fence says it is this attempt's)
    if current not in ACTIVE:  # queued: the create met the block; processing: a poll did (the job lives on)
        raise TransitionRefused(f"Cannot hand back a {current} task: only an active attempt meets a block")
    why = f"integration blocked: {report.error or 'the provider refuses the account'}"
    if task["cancelRequestedAt"] is not None:  # handed back while its cancel is asked for: it ends here
        return Decision({**CANCELLED, "attemptsRefunded": (task["attemptsRefunded"] or 0) + 1}, "cancelled",
                        f"cancelled ({why})", blocks=True)
    return Decision({"status": "pending", "attemptsRefunded": (task["attemptsRefunded"] or 0) + 1,
                     "dispatchedAt": None, "error": why}, "pending", blocks=True)


def _check_attempt(task: dict, report: Report) -> None:
    if report.attempt != task["attempts"]:
        raise TransitionRefused(f"Stale report: attempt {report.attempt} is not the current attempt {task['attempts']}",
                                "stale_attempt")


def _confirm_dispatch(task: dict, now: float) -> Decision:
    """The processor confirms that the current attempt's workflow is started.

    Not a transition (no status change, no event): it marks the claim as owned by
    Temporal, so it is never rescued as stuck however long the workflow waits
    for a worker. A confirmation arriving after the workflow moved on is a no-op.
    """
    current = task["status"]
    if current == "queued" and task["dispatchedAt"] is None:
        return Decision({"dispatchedAt": now})
    if current in ("queued", "processing", "completed", "failed", "cancelled"):
        return DUPLICATE
    raise TransitionRefused(f"Cannot confirm the dispatch of a {current} task")


def _renew_claim(task: dict, now: float) -> Decision:
    """The processor that made the claim still holds it: its start waits for Temporal (an outage, a slow
    server). Not a transition (no status change, no event): the claim's `startedAt` moves to now, so the
    stuck rescue, which is for claims whose processor died, leaves it alone for another stuck timeout.
    A claim already started, or moved on, or whose cancel is asked for, is not renewed (a no-op); a rescued
    one is fenced off (409)."""
    if task["status"] == "queued" and task["dispatchedAt"] is None and task["cancelRequestedAt"] is None:
        return Decision({"startedAt": int(now)})
    return DUPLICATE  # a claim whose cancel is asked for ages as before: the cancel hand-out ends it


def _progress(task: dict, report: Report, policy: Policy, now: float) -> Decision:
    current = task["status"]
    if report.status == current:
        return DUPLICATE
    if report.status not in ALLOWED.get(current, ()):
        raise TransitionRefused(f"Cannot transition to {report.status} from {current}")
    changes: dict[str, Any] = {"status": report.status}
    # The provider took a new job (not the earlier attempt's, resumed; not a completion of an old one).
    unblocks = report.status == "processing" and report.external_id not in (None, task["externalId"])
    if report.external_id is not None:
        changes["externalId"] = report.external_id
    if report.status == "completed":
        changes["result"] = _dump(report.data)
    if report.status == "cancelled":  # the workflow stopped on a cancel request; its text goes on the event
        return Decision({**changes, **CANCELLED}, "cancelled", report.error or "cancelled")
    if report.status == "failed":
        changes["error"] = report.error or "failed (no message given)"
        # Failed for good is decided here, once: the retry index then never holds it. A retryable
        # failure waits for its retryAt: an outage spends time, not attempts.
        # A task whose cancel is asked for is not tried again: its failure is final.
        again = report.retryable and spent(task) < policy.max_attempts and task["cancelRequestedAt"] is None
        changes["retryable"] = 1 if again else 0
        changes["retryAt"] = now + policy.retry_delay(task["id"], spent(task)) if again else None
    return Decision(changes, report.status, unblocks=unblocks)


def _check_claimable(task: dict, policy: Policy, now: float) -> None:
    current, attempts = task["status"], task["attempts"]
    refusal = f"Cannot transition to queued from {current}"
    if task["cancelRequestedAt"] is not None and current != "pending":
        raise TransitionRefused(f"{refusal}: its cancel is asked for", "not_claimable")
    if current == "pending":
        return
    if current == "failed":
        if not task["retryable"]:
            raise TransitionRefused(f"{refusal}: the task failed for good (not retryable)", "not_claimable")
        if spent(task) >= policy.max_attempts:
            raise TransitionRefused(f"{refusal}: all {policy.max_attempts} attempts are used", "not_claimable")
        if task["retryAt"] is not None and task["retryAt"] > now:
            raise TransitionRefused(f"{refusal}: its retry is due in {task['retryAt'] - now:.0f}s", "not_claimable")
        return
    if current == "queued":
        if task["dispatchedAt"] is not None:
            raise TransitionRefused(f"{refusal}: attempt {attempts}'s workflow is started; Temporal owns it",
                                    "not_claimable")
        if spent(task) >= policy.max_attempts:
            raise TransitionRefused(f"{refusal}: all {policy.max_attempts} attempts are used", "not_claimable")
        if (task["startedAt"] or 0) < now - policy.stuck_timeout_seconds:
            return
        raise TransitionRefused(f"{refusal}: attempt {attempts} was claimed (or renewed) less than "
                                f"{policy.stuck_timeout_seconds}s ago", "not_claimable")
    raise TransitionRefused(refusal, "not_claimable")


def transition(conn: sqlite3.Connection, table: TaskTable, task_id: str, report: Report,
               now: float | None = None) -> Outcome:
    """Apply one report to one task, atomically with its event."""
    now = time.time() if now is None else now
    with immediate(conn):
        return _apply(conn, table, task_id, report, now)


def transition_many(conn: sqlite3.Connection, table: TaskTable, reports: list[tuple[str, Report]],
                    now: float | None = None) -> list[Outcome | TaskNotFound | TransitionRefused]:
    """Apply several reports in one write transaction; each is judged on its own.

    A refused report writes nothing and does not undo the others: its slot in
    the result holds the exception. One transaction per batch costs one lock
    and one commit instead of N.
    """
    now = time.time() if now is None else now
    with immediate(conn):
        _lock_rows(conn, table, [task_id for task_id, _ in reports])
        return _apply_each(conn, table, reports, now)


def _lock_rows(conn, table: TaskTable, ids: list[str]) -> None:
    """PostgreSQL: lock these task rows in id order before any is judged (no lock-order deadlocks).
    SQLite holds its one write lock already."""
    if _pg(conn) and len(ids) > 1:
        id_col = _q(table.entity.column("id"))
        conn.execute(f"SELECT 1 FROM {_q(table.entity.table)} WHERE {id_col} = ANY(?) ORDER BY {id_col} FOR UPDATE",
                     (sorted(set(ids)),)).fetchall()


def _apply_each(conn, table, reports, now) -> list[Outcome | TaskNotFound | TransitionRefused]:
    """Each report on its own (inside the caller's transaction): an outcome, or the refusal in its slot."""
    results: list[Outcome | TaskNotFound | TransitionRefused] = []
    for task_id, report in reports:
        try:
            results.append(_apply(conn, table, task_id, report, now))
        except (TaskNotFound, TransitionRefused) as exc:
            results.append(exc)
    return results


def claim_next(conn: sqlite3.Connection, table: TaskTable, limit: int, confirmations: Iterable[tuple[str, int]] = (),
               now: float | None = None) -> tuple[list[dict], list[Outcome | TaskNotFound | TransitionRefused]]:
    """Claim the `limit` oldest claimable tasks in one write transaction; (claimed tasks, confirmation outcomes).

    Choosing and claiming under one write lock is what lets any number of
    processors pull from the same backlog without ever picking the same task:
    no claim is lost to a race, so no request is wasted on one. Each claim still
    goes through `decide()` and writes its `queued` event. `confirmations`
    (task id, attempt) of started workflows are applied first, in the same commit.
    Each claimed task carries `attempt`, the number its workflow must be started with.
    """
    now = time.time() if now is None else now
    claimed = []
    confirmations = list(confirmations)
    with immediate(conn):
        _lock_rows(conn, table, [task_id for task_id, _ in confirmations])
        confirmed = _apply_each(conn, table, [(task_id, Report.dispatched(attempt))
                                              for task_id, attempt in confirmations], now)
        if _pg(conn) and table.policy.max_active is not None:  # the cap is counted by one claimer at a time
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, ?))",
                         (table.entity.table, CAP_LOCK)).fetchall()
        if _pg(conn):
            return _claim_pg(conn, table, limit, now), confirmed
        for task in fetch_claimable(conn, table, limit, now, lock=True):
            try:
                outcome = _apply(conn, table, task["id"], Report.claim(), now)
            except TransitionRefused:  # cannot happen under the lock; if it did, claim the others
                continue
            claimed.append({**task, "status": outcome.status, "attempts": outcome.attempt,
                            "startedAt": int(now), "attempt": outcome.attempt})
    return claimed, confirmed


def _claim_pg(conn, table: TaskTable, limit: int, now: float) -> list[dict]:
    """claim_next's claims on PostgreSQL, in round trips that do not grow with the batch: the integration's
    block (locked, if any), the candidates (locked as they are read, SKIP LOCKED, whole rows: the versions
    just locked), then `decide()` on each as `_apply` does, one pipelined batch of the fenced UPDATEs (a row
    whose fence fails is not claimed) and one of their `queued` events. A claim makes nothing claimable, so
    it wakes nobody."""
    block = get_block(conn, table.integration, lock=True)  # one claimer at a time takes a blocked one's probe
    judged = []
    for task in _claimable_rows(conn, table, limit, now, block, lock=True):
        try:
            judged.append((task, decide(task, Report.claim(), table.policy, now)))
        except TransitionRefused:  # cannot happen on a row locked with its kind's predicate re-checked
            continue
    if block is not None and judged:  # its probe: one task, and the next probe an interval away
        judged = judged[:1]
        _move_probe(conn, table, judged[0][0]["id"], now)
    took = _update_many_pg(conn, table.entity, judged, now)
    claimed = [(task, decision) for task, decision in judged if task["id"] in took]
    if claimed:
        conn.executemany(EVENT_SQL, [(table.integration, task["id"], decision.event, decision.changes["attempts"],
                                      None, None, None, now) for task, decision in claimed])
    return [{**{name: task[name] for name in CLAIM_FIELDS}, "status": decision.changes["status"],
             "attempts": decision.changes["attempts"], "startedAt": int(now),
             "attempt": decision.changes["attempts"]} for task, decision in claimed]


def _update_many_pg(conn, entity: EntityMapping, judged: list[tuple[dict, Decision]], now: float) -> set[str]:
    """`_update` for several tasks whose changes set the same fields, pipelined (one round trip); the ids whose
    fenced UPDATE took (the others changed nothing)."""
    if not judged:
        return set()
    fields = [*judged[0][1].changes, "updatedAt"]
    assert all(list(decision.changes) == fields[:-1] for _, decision in judged), "one set of fields per batch"
    cursor = conn.executemany(f"{_update_sql(entity, fields)} RETURNING {_q(entity.column('id'))}",
                              [[*decision.changes.values(), now, task["id"], task["status"], task["attempts"]]
                               for task, decision in judged], returning=True)
    took = set()
    while True:
        took.update(row[0] for row in cursor.fetchall())
        if not cursor.nextset():
            return took


def _apply(conn: sqlite3.Connection, table: TaskTable, task_id: str, report: Report, now: float) -> Outcome:
    task = _select(conn, table.entity, task_id, lock=True)
    if task is None:
        raise TaskNotFound("Task not found")
    decision = decide(task, report, table.policy, now)
    if report.kind is ReportKind.CLAIM:
        _take_probe(conn, table, task_id, now)
    if decision.duplicate:
        return Outcome(task["status"], task["attempts"], duplicate=True,
                       cancelling=task["status"] in ACTIVE and task["cancelRequestedAt"] is not None)
    changes = decision.changes
    _update(conn, table.entity, task, changes, now)
    status, attempt = changes.get("status", task["status"]), changes.get("attempts", task["attempts"])
    if decision.event is not None:
        _append_event(conn, table.integration, task_id, decision.event, attempt, now,
                      external_id=changes.get("externalId"), data=changes.get("result"),
                      error=changes.get("error") or decision.note)
    if decision.blocks:
        _block(conn, table, task_id, report.error, now)
    resumed = decision.unblocks and conn.execute(
        "DELETE FROM integration_blocks WHERE integration = ?", (table.integration,)).rowcount > 0
    if _pg(conn) and (resumed or _makes_claimable(table, task, changes)):
        conn.mark_ready(table.integration)
    return Outcome(status, attempt, resumed=resumed, cancelling=status in ACTIVE and "cancelRequestedAt" in changes)


def _makes_claimable(table: TaskTable, task: dict, changes: dict) -> bool:
    """Whether this change makes work claimable (PostgreSQL wakes the integration's long polls after the
    commit, web/pg_wakeup.py): pending again (an operator retry, a blocked hand-back), a retryable failure
    (due now or later: a later one is found by the polls' re-check), a cancel asked of an active task
    (handed out by claims), or an active task ending under a cap (room for a claim). Claims, dispatch
    confirmations and other progress wake nobody."""
    before, after = task["status"], changes.get("status", task["status"])
    if after == "pending" and before != "pending":
        return True
    if after == "failed" and changes.get("retryable") == 1:
        return True
    if after in ACTIVE and changes.get("cancelRequestedAt") is not None:
        return True
    return table.policy.max_active is not None and before in ACTIVE and after not in ACTIVE


def _ready(conn, table: TaskTable) -> None:
    """PostgreSQL: the transaction makes work of the table's integration claimable (see _makes_claimable)."""
    if _pg(conn):
        conn.mark_ready(table.integration)


# -- cancel (docs/design.md §3.5) --

def request_cancel(conn: sqlite3.Connection, table: TaskTable, task_id: str, reason: str | None = None,
                   now: float | None = None) -> Outcome:
    """Cancel a task (`reason`: who asked). Pending or waiting for a retry: cancelled now. Queued or processing:
    `cancelling` (its workflow is cancelled through Temporal; it reports `cancelled`, unless its completion or
    failure lands first: one outcome either way). Idempotent. TaskNotFound; TransitionRefused if finished."""
    return transition(conn, table, task_id, Report.cancel(reason), now)


def _cancel_due_sql(table: TaskTable) -> str:
    """Active tasks whose cancel is asked for and not handed out in the last CANCEL_RESEND_SECONDS (its index)."""
    c = lambda name: _q(table.entity.column(name))
    return (f"FROM {_q(table.entity.table)} WHERE {c('cancelRequestedAt')} IS NOT NULL "
            f"AND {c('status')} IN ('queued', 'processing') "
            f"AND ({c('cancelSentAt')} IS NULL OR {c('cancelSentAt')} < :resend)")


def cancels_due(conn: sqlite3.Connection, table: TaskTable, now: float | None = None) -> bool:
    """Whether take_cancels would hand anything out (a read: the long polls ask it after every commit)."""
    now = time.time() if now is None else now
    sql = f"SELECT 1 {_cancel_due_sql(table)} LIMIT 1"
    return conn.execute(sql, {"resend": now - CANCEL_RESEND_SECONDS}).fetchone() is not None


def take_cancels(conn: sqlite3.Connection, table: TaskTable, limit: int = CANCEL_BATCH,
                 now: float | None = None) -> list[dict]:
    """The cancels a processor should deliver to Temporal now: [{id, attempt, status}], each marked as sent.

    Delivery is at least once: a cancel is handed out again every CANCEL_RESEND_SECONDS while its task stays
    active (the workflow was not started yet, Temporal was down, the processor died); cancelling a workflow
    twice is harmless. A claim abandoned before its workflow was confirmed started has no workflow that
    would report: it is cancelled here, and its cancel still handed out once in case a run exists after all.
    """
    now = time.time() if now is None else now
    if not cancels_due(conn, table, now):
        return []
    handed = []
    with immediate(conn):
        # PostgreSQL: rows another transaction holds are left to it (a cancel is delivered at least once anyway)
        skip = " FOR UPDATE SKIP LOCKED" if _pg(conn) else ""
        ids = [row[0] for row in conn.execute(
            f"SELECT {_q(table.entity.column('id'))} {_cancel_due_sql(table)} "
            f"ORDER BY {_q(table.entity.column('cancelSentAt'))} NULLS FIRST LIMIT :limit{skip}",
            {"resend": now - CANCEL_RESEND_SECONDS, "limit": limit})]
        for task_id in ids:
            task = _select(conn, table.entity, task_id, lock=True)
            if task is None or task["status"] not in ACTIVE or task["cancelRequestedAt"] is None:
                continue
            changes: dict[str, Any] = {"cancelSentAt": now}
            abandoned = (task["status"] == "queued" and task["dispatchedAt"] is None
                         and (task["startedAt"] or 0) < now - table.policy.stuck_timeout_seconds)
            if abandoned:
                changes.update(CANCELLED)
            _update(conn, table.entity, task, changes, now)
            if abandoned:
                if table.policy.max_active is not None:
                    _ready(conn, table)
                _append_event(conn, table.integration, task_id, "cancelled", task["attempts"], now,
                              error="cancelled: its claim was abandoned before a workflow was confirmed started")
            handed.append({"id": task_id, "attempt": task["attempts"], "status": changes.get("status",
                                                                                              task["status"])})
    return handed


# -- blocked integrations (docs/design.md §3.4) --

def _block(conn: sqlite3.Connection, table: TaskTable, task_id: str, reason: str | None, now: float) -> None:
    """Block the integration (or refresh its block): nothing is claimed until the next probe is due."""
    conn.execute(
        "INSERT INTO integration_blocks (integration, reason, task_id, since, probe_at, updated_at) "
        "VALUES (:name, :reason, :task, :now, :probe, :now) ON CONFLICT (integration) DO UPDATE SET "
        "reason = excluded.reason, task_id = excluded.task_id, probe_at = excluded.probe_at, "
        "updated_at = excluded.updated_at",
        {"name": table.integration, "reason": reason or "the provider refuses the account", "task": task_id,
         "now": now, "probe": now + table.policy.probe_seconds})


def _take_probe(conn: sqlite3.Connection, table: TaskTable, task_id: str, now: float) -> None:
    """A claim of a blocked integration is its probe: refused until the probe is due; then taken, and the
    next probe is an interval away. (Every claim path, batch or single, passes here.) On PostgreSQL the
    block's row is locked first, so of two claimers only one takes a probe."""
    block = get_block(conn, table.integration, lock=_pg(conn))
    if block is None:
        return
    if block["probeAt"] > now:
        raise TransitionRefused(f"Cannot claim: the integration is blocked ({block['reason']}); its next probe "
                                f"is due in {block['probeAt'] - now:.0f}s", "blocked")
    _move_probe(conn, table, task_id, now)


def _move_probe(conn, table: TaskTable, task_id: str, now: float) -> None:
    """`task_id` is the blocked integration's probe; the next one is due an interval from now."""
    conn.execute("UPDATE integration_blocks SET probe_at = ?, task_id = ? WHERE integration = ?",
                 (now + table.policy.probe_seconds, task_id, table.integration))


SELECT_BLOCKS = ('SELECT integration, reason, task_id AS "taskId", since, probe_at AS "probeAt", '
                 'updated_at AS "updatedAt" FROM integration_blocks')


def get_block(conn: sqlite3.Connection, integration: str, lock: bool = False) -> dict | None:
    """The integration's block ({integration, reason, taskId, since, probeAt, updatedAt}), or None.
    `lock` (PostgreSQL, in a transaction): its row is locked until the commit."""
    row = conn.execute(f"{SELECT_BLOCKS} WHERE integration = ?{' FOR UPDATE' if lock else ''}",
                       (integration,)).fetchone()
    return dict(row) if row else None


def list_blocks(conn: sqlite3.Connection) -> list[dict]:
    """Every blocked integration, oldest block first."""
    return [dict(row) for row in conn.execute(f"{SELECT_BLOCKS} ORDER BY since")]


def resume_integration(conn: sqlite3.Connection, integration: str) -> dict | None:
    """An operator ends the integration's block; returns the block it ended (None: it was not blocked)."""
    with immediate(conn):
        block = get_block(conn, integration)
        conn.execute("DELETE FROM integration_blocks WHERE integration = ?", (integration,))
        if block is not None and _pg(conn):
            conn.mark_ready(integration)
    return block


def create_task(conn: sqlite3.Connection, table: TaskTable, request_params: dict, now: float | None = None) -> dict:
    """Insert a pending task and its `pending` event; return the task."""
    now = time.time() if now is None else now
    with immediate(conn):
        task_id = _insert_task(conn, table, request_params, now)
        _ready(conn, table)
    if _pg(conn):
        _maybe_fold(conn, now)  # after the commit: creates alone (no processor claiming) keep the deltas few too
    return get_task(conn, table, task_id)


def create_task_once(conn: sqlite3.Connection, table: TaskTable, request_params: dict, scope: str, key: str,
                     fingerprint: str, now: float | None = None) -> tuple[str, bool]:
    """create_task under an Idempotency-Key: (task id, True) for a new task; (the first task's id, False) if
    `scope` (the client) used `key` for the same request (`fingerprint`) within IDEMPOTENCY_SECONDS.

    The look-up and the insert share one write transaction, so concurrent duplicates make one task.
    Raises KeyReused if the key was used for another request.
    """
    now = time.time() if now is None else now
    with immediate(conn):
        if _pg(conn):  # concurrent uses of one key wait for each other here (SQLite: its write lock)
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, ?))",
                         (f"{scope}:{key}", KEY_LOCK)).fetchall()
        seen = conn.execute("SELECT fingerprint, task_id FROM idempotency_keys WHERE scope = ? AND key = ? "
                            "AND created_at > ?", (scope, key, now - IDEMPOTENCY_SECONDS)).fetchone()
        if seen is not None:
            if seen[0] != fingerprint:
                raise KeyReused("This Idempotency-Key was used for a different request in the last 24 hours")
            return seen[1], False
        if _pg(conn):
            conn.execute("DELETE FROM idempotency_keys WHERE (scope, key) IN (SELECT scope, key FROM idempotency_keys "
                         "WHERE created_at <= ? ORDER BY created_at LIMIT ? FOR UPDATE SKIP LOCKED)",
                         (now - IDEMPOTENCY_SECONDS, EXPIRED_KEYS_BATCH))
        else:
            conn.execute("DELETE FROM idempotency_keys WHERE rowid IN (SELECT rowid FROM idempotency_keys "
                         "WHERE created_at <= ? ORDER BY created_at LIMIT ?)", (now - IDEMPOTENCY_SECONDS,
                                                                             EXPIRED_KEYS_BATCH))
        task_id = _insert_task(conn, table, request_params, now)
        _ready(conn, table)
        upsert = ("INSERT INTO idempotency_keys (scope, key, fingerprint, task_id, created_at) VALUES (?, ?, ?, ?, ?) "
                  "ON CONFLICT (scope, key) DO UPDATE SET fingerprint = excluded.fingerprint, "
                  "task_id = excluded.task_id, created_at = excluded.created_at") if _pg(conn) else (
            "INSERT OR REPLACE INTO idempotency_keys (scope, key, fingerprint, task_id, created_at) "
            "VALUES (?, ?, ?, ?, ?)")
        conn.execute(upsert, (scope, key, fingerprint, task_id, now))
    if _pg(conn):
        _maybe_fold(conn, now)
    return task_id, True


def _insert_task(conn: sqlite3.Connection, table: TaskTable, request_params: dict, now: float) -> str:
    """The pending task's row and its `pending` event (inside the caller's transaction); its id."""
    task_id = str(uuid.uuid4())
    row = {
        "id": task_id, "status": "pending", "attempts": 0, "startedAt": None,
        "requestParams": json.dumps(request_params), "createdAt": now, "updatedAt": now,
        "retryable": 1,
    }
    columns = ", ".join(_q(table.entity.column(f)) for f in row)
    marks = ", ".join("?" for _ in row)
    conn.execute(f"INSERT INTO {_q(table.entity.table)} ({columns}) VALUES ({marks})", list(row.values()))
    _append_event(conn, table.integration, task_id, "pending", 0, now)
    return task_id


def expire_stuck(conn: sqlite3.Connection, table: TaskTable, now: float | None = None) -> list[str]:
    """Fail queued claims that are stuck with every attempt used, so none sits in `queued` forever."""
    now = time.time() if now is None else now
    entity, policy, c = table.entity, table.policy, table.entity.column
    cutoff = now - policy.stuck_timeout_seconds
    if _pg(conn):
        _maybe_fold(conn, now)
        cutoff = math.ceil(cutoff)  # startedAt is a BIGINT: an integer cutoff keeps its index (same rows)
    candidates = [row[0] for row in conn.execute(
        f"SELECT {_q(c('id'))} FROM {_q(entity.table)} WHERE {_q(c('status'))} = 'queued' "
        f"AND {_q(c('attempts'))} >= ? AND +{_q(c('startedAt'))} < ? "  # + : use the attempts index
        f"AND +{_q(c('attempts'))} - {_q(c('attemptsRefunded'))} >= ? "  # refunds: spent attempts decide
        f"AND {_q(c('dispatchedAt'))} IS NULL LIMIT ?",
        (policy.max_attempts, cutoff, policy.max_attempts, EXPIRE_BATCH),
    )]
    expired = []
    for task_id in candidates:
        with immediate(conn):
            task = _select(conn, entity, task_id, lock=True, skip_locked=True)  # a held one: another host has it
            if not (task and task["status"] == "queued" and (task["startedAt"] or 0) < cutoff
                    and spent(task) >= policy.max_attempts and task["dispatchedAt"] is None):
                continue
            error = (f"Attempt {task['attempts']} of {policy.max_attempts} made no progress within "
                     f"{policy.stuck_timeout_seconds}s of its claim (or its last renewal); no attempts left")
            _update(conn, entity, task, {"status": "failed", "error": error, "retryable": 0}, now)
            _append_event(conn, table.integration, task_id, "failed", task["attempts"], now, error=error)
            if table.policy.max_active is not None:
                _ready(conn, table)  # room under the cap
            expired.append(task_id)
    return expired


def fetch_claimable(conn: sqlite3.Connection, table: TaskTable, limit: int, now: float | None = None,
                    lock: bool = False) -> list[dict]:
    """Claimable tasks, oldest createdAt first: pending, retry due, stuck queued (docs/design.md §3).

    A queued claim is stuck only if its workflow start was never confirmed
    (dispatchedAt is NULL): a started workflow waiting for a worker is Temporal's.
    A retryable failure is claimable once its retryAt has passed. With a cap
    (`policy.max_active`), only as many new claims as the cap leaves room for are
    returned; a stuck claim's rescue takes no new room (it is active already).

    Each kind is read in its index's order and cut by its own LIMIT, so the cost
    follows `limit`, not the table size. Due retries are picked oldest-due first and
    stuck claims oldest claim first (their index orders); the merged batch is ordered
    by createdAt. The unary `+` on attempts keeps the planner on each kind's index.

    A blocked integration yields nothing until its probe is due, then one task: of the oldest
    PROBE_CANDIDATES, the one handed back least often (its claim moves the probe on, _take_probe).
    Spent attempts (attempts less the refunded ones) count against the limit. Each task carries
    `externalId`: the previous attempt's job.

    On PostgreSQL each kind is its own CTE over its partial index (FOR UPDATE is refused across
    a UNION); with `lock` (claim_next, in its transaction) each locks what it reads, skipping rows
    another transaction holds, so concurrent claimers take disjoint tasks.
    """
    now = time.time() if now is None else now
    found = _claimable_rows(conn, table, limit, now, get_block(conn, table.integration), lock)
    return [{name: task[name] for name in CLAIM_FIELDS} for task in found] if _pg(conn) else found


def _claimable_rows(conn, table: TaskTable, limit: int, now: float, block: dict | None, lock: bool) -> list[dict]:
    """fetch_claimable's tasks; on PostgreSQL whole rows (what claims judge)."""
    if block is not None:
        if block["probeAt"] > now:
            return []
        limit = PROBE_CANDIDATES
    if _pg(conn):
        found = _claimable_pg(conn, table, limit, now, lock)
        return _pick_and_cap(conn, table, found, block)
    c = lambda name: _q(table.entity.column(name))
    spent_sql = f"+{c('attempts')} - {c('attemptsRefunded')}"  # spent(); the unary + keeps each kind's index
    select = (f"SELECT {c('id')} AS id, {c('status')} AS status, {c('startedAt')} AS startedAt, "
              f"{c('attempts')} AS attempts, {c('attemptsRefunded')} AS attemptsRefunded, "
              f"{c('requestParams')} AS requestParams, {c('externalId')} AS externalId, "
              f"{c('createdAt')} AS createdAt FROM {_q(table.entity.table)}")
    sql = f"""
        SELECT * FROM (SELECT * FROM ({select} WHERE {c('status')} = 'pending'
                                      ORDER BY {c('createdAt')} LIMIT :limit)
        UNION ALL
        SELECT * FROM ({select} WHERE {c('status')} = 'failed' AND {c('retryable')} = 1
                       AND {c('retryAt')} <= :now AND {spent_sql} < :max ORDER BY {c('retryAt')} LIMIT :limit)
        UNION ALL
        SELECT * FROM ({select} WHERE {c('status')} = 'queued' AND {c('dispatchedAt')} IS NULL
                       AND {c('startedAt')} < :cutoff AND {spent_sql} < :max AND {c('cancelRequestedAt')} IS NULL
                       ORDER BY {c('startedAt')} LIMIT :limit))
        ORDER BY createdAt LIMIT :limit
    """
    params = {"limit": limit, "max": table.policy.max_attempts, "now": now,
              "cutoff": now - table.policy.stuck_timeout_seconds}
    found = [_decode(dict(row)) for row in conn.execute(sql, params)]
    return _pick_and_cap(conn, table, found, block)


def _claimable_pg(conn, table: TaskTable, limit: int, now: float, lock: bool) -> list[dict]:
    """fetch_claimable's three kinds on PostgreSQL, whole rows: each a MATERIALIZED CTE (a fence: the planner
    must not turn the LIMIT into a nested loop that locks more) walking its partial index. Locking, a CTE
    returns the row version it locked (its predicate re-checked on it), not the statement's snapshot."""
    c = lambda name: _q(table.entity.column(name))
    tbl, skip = _q(table.entity.table), " FOR UPDATE SKIP LOCKED" if lock else ""
    spent_sql = f"{c('attempts')} - {c('attemptsRefunded')}"
    rows = f"SELECT {_all_columns(table.entity)} FROM {tbl}"
    sql = f"""
        WITH p AS MATERIALIZED ({rows} WHERE {c('status')} = 'pending' ORDER BY {c('createdAt')} LIMIT :limit{skip}),
             r AS MATERIALIZED ({rows} WHERE {c('status')} = 'failed'
                                AND {c('retryable')} = 1 AND {c('retryAt')} <= :now AND {spent_sql} < :max
                                ORDER BY {c('retryAt')} LIMIT :limit{skip}),
             s AS MATERIALIZED ({rows} WHERE {c('status')} = 'queued'
                                AND {c('dispatchedAt')} IS NULL AND {c('startedAt')} < :cutoff AND {spent_sql} < :max
                                AND {c('cancelRequestedAt')} IS NULL ORDER BY {c('startedAt')} LIMIT :limit{skip})
        SELECT * FROM p UNION ALL SELECT * FROM r UNION ALL SELECT * FROM s ORDER BY "createdAt" LIMIT :limit
    """
    params = {"limit": limit, "max": table.policy.max_attempts, "now": now,
              "cutoff": math.ceil(now - table.policy.stuck_timeout_seconds)}  # BIGINT: an integer keeps the index
    return [_decode(dict(row)) for row in conn.execute(sql, params)]


def _pick_and_cap(conn, table: TaskTable, found: list[dict], block: dict | None) -> list[dict]:
    """A blocked integration's one probe, then the active cap: what fetch_claimable answers."""
    if block is not None and found:
        # One probe: of the oldest few, the one handed back least often, so a task the account cannot afford
        # (a 4K image on a low balance) does not hold the head of the line and keep the block for ever.
        found = [min(found, key=lambda task: task["attemptsRefunded"] or 0)]
    return found if table.policy.max_active is None else _within_cap(conn, table, found)


def _within_cap(conn: sqlite3.Connection, table: TaskTable, found: list[dict]) -> list[dict]:
    """The tasks of `found` that the active cap lets be claimed now, in order."""
    room = table.policy.max_active - count_active(conn, table)
    allowed = []
    for task in found:
        if task["status"] == "queued":  # a rescue: the claim it replaces is counted already
            allowed.append(task)
        elif room > 0:
            allowed.append(task)
            room -= 1
    return allowed


def count_active(conn: sqlite3.Connection, table: TaskTable) -> int:
    """Tasks queued or processing: one range of the (status, createdAt) index per status."""
    status = _q(table.entity.column("status"))
    return sum(conn.execute(f"SELECT COUNT(*) FROM {_q(table.entity.table)} WHERE {status} = ?", (s,)).fetchone()[0]
               for s in ACTIVE)


def list_dispatched(conn: sqlite3.Connection, table: TaskTable, older_than_seconds: float,
                    after: tuple[float, str] | None = None, limit: int = 50, now: float | None = None) -> list[dict]:
    """Tasks Temporal owns (processing, or queued with a started workflow) unchanged for `older_than_seconds`.

    Paged in (createdAt, id) order from the cursor `after`, so the reconciler walks
    every such task in turn however many long jobs are running: each status is one
    range of its (status, createdAt) index, cut by its own LIMIT.
    """
    now = time.time() if now is None else now
    c = lambda name: _q(table.entity.column(name))
    created, task_id = after if after is not None else (float("-inf"), "")
    select = (f'SELECT {c("id")} AS "id", {c("status")} AS "status", {c("attempts")} AS "attempts", '
              f'{c("createdAt")} AS "createdAt", {c("updatedAt")} AS "updatedAt" FROM {_q(table.entity.table)}')
    page = (f"AND ({c('createdAt')} > :created OR ({c('createdAt')} = :created AND {c('id')} > :id)) "
            f"AND +{c('updatedAt')} < :cutoff ORDER BY {c('createdAt')}, {c('id')} LIMIT :limit")
    sql = f"""
        SELECT * FROM (SELECT * FROM ({select} WHERE {c('status')} = 'processing' {page}) AS processing
        UNION ALL
        SELECT * FROM ({select} WHERE {c('status')} = 'queued' AND {c('dispatchedAt')} IS NOT NULL {page}) AS queued)
        AS dispatched ORDER BY "createdAt", "id" LIMIT :limit
    """
    params = {"created": created, "id": task_id, "cutoff": now - older_than_seconds, "limit": limit}
    return [dict(row) for row in conn.execute(sql, params)]


def get_task(conn: sqlite3.Connection, table: TaskTable, task_id: str) -> dict | None:
    """The task as the API shows it (JSON fields decoded), or None."""
    task = _select(conn, table.entity, task_id)
    return _decode(task) if task else None


def find_task(conn: sqlite3.Connection, tables: Iterable[TaskTable], task_id: str) -> tuple[TaskTable | None,
                                                                                          dict | None]:
    """The table that holds `task_id` and the task, or (None, None)."""
    for table in tables:
        task = get_task(conn, table, task_id)
        if task is not None:
            return table, task
    return None, None


def list_events(conn: sqlite3.Connection, task_id: str) -> list[dict]:
    """A task's events, oldest first."""
    rows = conn.execute(
        'SELECT status, attempt, external_id AS "externalId", data, error, created_at AS "createdAt" '
        "FROM task_events WHERE task_id = ? ORDER BY id", (task_id,),
    )
    return [{**dict(row), "data": _load(row["data"])} for row in rows]


def list_tasks(conn: sqlite3.Connection, table: TaskTable, status: str | None = None, limit: int = 50) -> list[dict]:
    """The newest tasks (optionally of one status), each status read through its (status, createdAt) index.

    The createdAt range (always true) keeps the planner on that index once ANALYZE has run: with
    statistics it may pick another index on status and sort every task of the status (seen at 1M tasks).
    """
    statuses = [status] if status else list(STATUSES)
    c = lambda name: _q(table.entity.column(name))
    parts = [f"SELECT * FROM (SELECT {_all_columns(table.entity)} FROM {_q(table.entity.table)} "
             f"WHERE {c('status')} = ? AND {c('createdAt')} > -1e308 ORDER BY {c('createdAt')} DESC LIMIT ?) AS s{i}"
             for i, _ in enumerate(statuses)]
    sql = " UNION ALL ".join(parts) + ' ORDER BY "createdAt" DESC LIMIT ?'
    params = [value for s in statuses for value in (s, limit)] + [limit]
    return [_decode(dict(row)) for row in conn.execute(sql, params)]


def count_by_status(conn: sqlite3.Connection, table: TaskTable) -> dict[str, int]:
    """Tasks per status, read from task_counts (kept exact by the table's triggers): no scan, at any size."""
    counts = dict.fromkeys(STATUSES, 0)
    if _pg(conn):  # delta rows, added up (migrations/postgresql/0001); folded by the writers (_maybe_fold),
        # never here: a read must not write (the dashboard's GET, a metrics scrape), and a fold rewrites the rows
        rows = conn.execute("SELECT status, SUM(n)::bigint FROM task_counts WHERE tbl = ? GROUP BY status",
                            (table.entity.table,))
        counts.update(dict(rows.fetchall()))
        return counts
    rows = conn.execute("SELECT status, n FROM task_counts WHERE tbl = ?", (table.entity.table,))
    counts.update(dict(rows.fetchall()))
    return counts


def oldest_pending_created_at(conn: sqlite3.Connection, table: TaskTable) -> float | None:
    c = table.entity.column
    row = conn.execute(f"SELECT MIN({_q(c('createdAt'))}) FROM {_q(table.entity.table)} "
                       f"WHERE {_q(c('status'))} = 'pending'").fetchone()
    return row[0]


_folded_at = 0.0


def fold_counts(conn) -> None:
    """PostgreSQL: fold the dashboard counters' delta rows (one folder at a time; a busy fold is skipped)."""
    global _folded_at
    _folded_at = time.monotonic()
    conn.execute("SELECT fold_task_counts()").fetchall()


def _maybe_fold(conn, _now: float) -> None:
    """Fold at most every FOLD_SECONDS per process, on the write paths (claims, creates), so the delta rows stay
    few and the reads that add them up (the dashboard, metrics, the CLI's stats) write nothing."""
    if time.monotonic() - _folded_at >= FOLD_SECONDS:
        try:  # housekeeping: it never fails the request it rides on (a create has committed by now)
            fold_counts(conn)
        except Exception as exc:
            log.warning("dashboard counters not folded this time: %s", str(exc).splitlines()[0] if str(exc) else exc)


# -- helpers --

def _q(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _all_columns(entity: EntityMapping) -> str:
    """Every mapped column, aliased to its field name."""
    return ", ".join(f"{_q(col)} AS {_q(field)}" for field, col in entity.columns.items())


def _select(conn: sqlite3.Connection, entity: EntityMapping, task_id: str, lock: bool = False,
            skip_locked: bool = False) -> dict | None:
    """The task's row; `lock` (inside a write transaction): on PostgreSQL its row is locked until the commit
    (`skip_locked`: None if another transaction holds it). SQLite's write lock covers it already."""
    if "\x00" in task_id:  # no id holds a NUL; PostgreSQL refuses one in a text parameter (a 500, not a 404)
        return None
    locking = (" FOR UPDATE SKIP LOCKED" if skip_locked else " FOR UPDATE") if lock and _pg(conn) else ""
    row = conn.execute(
        f"SELECT {_all_columns(entity)} FROM {_q(entity.table)} WHERE {_q(entity.column('id'))} = ?{locking}",
        (task_id,)).fetchone()
    return dict(row) if row else None


def _update_sql(entity: EntityMapping, fields: Iterable[str]) -> str:
    """The fenced UPDATE of `fields` (params: their values, then id, the status and attempts read)."""
    assignments = ", ".join(f"{_q(entity.column(f))} = ?" for f in fields)
    return (f"UPDATE {_q(entity.table)} SET {assignments} WHERE {_q(entity.column('id'))} = ? "
            f"AND {_q(entity.column('status'))} = ? AND {_q(entity.column('attempts'))} = ?")


def _update(conn: sqlite3.Connection, entity: EntityMapping, task: dict, changes: dict, now: float) -> None:
    changes = {**changes, "updatedAt": now}
    cursor = conn.execute(_update_sql(entity, changes),
                          [*changes.values(), task["id"], task["status"], task["attempts"]])
    if cursor.rowcount != 1:  # impossible under BEGIN IMMEDIATE; refuse rather than guess
        raise TransitionRefused(f"Cannot transition to {changes.get('status', task['status'])} from {task['status']}")


EVENT_SQL = ("INSERT INTO task_events (namespace, task_id, status, attempt, external_id, data, error, created_at) "
             "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


def _append_event(conn, integration, task_id, status, attempt, now, external_id=None, data=None, error=None):
    conn.execute(EVENT_SQL, (integration, task_id, status, attempt, external_id, data, error, now))


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _decode(task: dict) -> dict:
    for key in ("requestParams", "result"):
        if key in task:
            task[key] = _load(task[key])
    if "retryable" in task:
        task["retryable"] = bool(task["retryable"])
    return task


# -- retention (docs/design.md §3.6): finished tasks deleted whole, in small write transactions --

# Statuses a task ends in. `failed` counts only once failed for good (retryable = 0); 'cancelled' is
# listed whether or not this release's STATUSES has it yet (a status no row holds is an empty range).
PRUNABLE = ("completed", "cancelled", "failed")
# Tasks deleted per write transaction, chosen by measurement (bench/prune.py --sweep, 1M finished tasks with
# 3 events each, this 2-core machine): a task costs ~12 µs of write lock with its events, so 100 hold the lock
# 1.2 ms at the median and 3.4 ms at p99 (25: 0.7 ms, 400: 4.8 ms median). The rare longer holds are time
# off the CPU (a filesystem journal commit, a busy machine) and come at any batch size; 100 keeps the median
# ~8x under the 10 ms budget and prunes 28,000 tasks/s with the rests between batches.
PRUNE_BATCH = 100
CHECKPOINT_EVERY = 10  # batches between two checkpoints of the WAL, outside the lock (0: SQLite's own)
PRUNE_PAUSE_RATIO = 1.0  # after each batch, rest this many times as long as it held the lock


@dataclass
class PruneReport:
    """What one prune deleted and how long it took; `longest_lock_ms` is its longest write transaction."""

    tasks: int = 0
    events: int = 0
    keys: int = 0
    batches: int = 0
    seconds: float = 0.0
    longest_lock_ms: float = 0.0
    lock_ms: list[float] = field(default_factory=list)  # every batch's write-lock hold, in order


def prune_finished(conn: sqlite3.Connection, tables: Iterable[TaskTable], older_than_seconds: float,
                   batch_size: int = PRUNE_BATCH, on_pruned: Callable[[list[str]], None] | None = None,
                   stop: threading.Event | None = None, pause_ratio: float = PRUNE_PAUSE_RATIO,
                   now: float | None = None) -> PruneReport:
    """Delete finished tasks whose createdAt and updatedAt are both older than `older_than_seconds`, with
    their events and Idempotency-Keys. Live tasks (pending, queued, processing, failed and retryable) are
    never touched.

    Batches of at most `batch_size` tasks, each its own BEGIN IMMEDIATE transaction: the task rows first
    (re-checked in the DELETE's WHERE, so a task that moved since it was read stays), then their events
    (the trigger lets an event go only once its task row is gone), then their keys. Candidates are read
    before the lock, one (status, createdAt) index range per finished status walked with a cursor, so a
    batch costs the same at any table size. Between batches the prune rests `pause_ratio` times as long
    as it held the lock, so writers queued behind it (creates, reports) get their turn.

    `on_pruned(ids)` runs after each batch commits (the media store's deletes): a crash between the
    commit and the callback leaves that batch's media behind as orphans; an exception from it stops
    the prune. Setting `stop` ends it between two batches.
    """
    if not (math.isfinite(older_than_seconds) and older_than_seconds >= 0):
        raise ValueError(f"older_than_seconds must be a non-negative number, got {older_than_seconds!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size!r}")
    started = time.perf_counter()
    now = time.time() if now is None else now
    cutoff = now - older_than_seconds
    report = PruneReport()
    # The WAL is checkpointed after each batch, outside the write lock, rather than by the commit that fills
    # it (an auto-checkpoint runs inside that COMMIT call and would add its disk writes to the batch's time).
    # PostgreSQL has no WAL file of ours to checkpoint and no rowid: its cursor is (createdAt, id).
    postgres = _pg(conn)
    autocheckpoint = None if postgres else conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    if not postgres:
        conn.execute(f"PRAGMA wal_autocheckpoint = {autocheckpoint if CHECKPOINT_EVERY == 0 else 0}")
    try:
        for table in tables:
            for status in PRUNABLE:
                after: tuple[float, int | str] = (float("-inf"), "" if postgres else 0)
                while not (stop is not None and stop.is_set()):
                    found = _prune_candidates(conn, table, status, cutoff, after, batch_size)
                    if not found:
                        break
                    after = (found[-1][2], found[-1][0])
                    pruned, held_ms = _prune_batch(conn, table, status, cutoff, found, report, now)
                    if CHECKPOINT_EVERY and report.batches % CHECKPOINT_EVERY == 0 and not postgres:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")  # waits for no reader or writer
                    if pruned and on_pruned is not None:
                        on_pruned(pruned)
                    if pause_ratio > 0:
                        (stop.wait if stop is not None else time.sleep)(held_ms / 1000 * pause_ratio)
                    if len(found) < batch_size:
                        break
    finally:
        if not postgres:
            conn.execute(f"PRAGMA wal_autocheckpoint = {int(autocheckpoint)}")
    report.seconds = time.perf_counter() - started
    return report


def _prune_where(table: TaskTable, status: str, indexed: bool = True) -> str:
    """The finished-and-old condition (params: status, cutoff, cutoff); `failed` only failed for good.

    The unary + keeps a term off the indexes: `indexed` reads the (status, createdAt) range; otherwise the
    terms only filter (the DELETE of a batch by id, which must not walk the range instead).
    """
    c = lambda name: _q(table.entity.column(name))
    key = "" if indexed else "+"
    for_good = f" AND +{c('retryable')} = 0" if status == "failed" else ""
    return f"{key}{c('status')} = ? AND {key}{c('createdAt')} < ? AND +{c('updatedAt')} < ?{for_good}"


def _prune_candidates(conn, table: TaskTable, status: str, cutoff: float, after: tuple[float, int],
                      limit: int) -> list[tuple[int, str, float]]:
    """(rowid, id, createdAt) of the next prunable tasks after the cursor, read without the write lock."""
    c = lambda name: _q(table.entity.column(name))
    rowid = c("id") if _pg(conn) else "rowid"  # PostgreSQL: its (status, created_at, id) index
    sql = (f"SELECT {rowid}, {c('id')}, {c('createdAt')} FROM {_q(table.entity.table)} "
           f"WHERE {_prune_where(table, status)} AND ({c('createdAt')}, {rowid}) > (?, ?) "
           f"ORDER BY {c('createdAt')}, {rowid} LIMIT ?")
    return [tuple(row) for row in conn.execute(sql, (status, cutoff, cutoff, *after, limit))]


def _prune_batch(conn, table: TaskTable, status: str, cutoff: float, found: list[tuple[int, str, float]],
                 report: PruneReport, now: float) -> tuple[list[str], float]:
    """One write transaction: the tasks still prunable, their events, their expired keys. (ids deleted, lock ms).

    A key younger than IDEMPOTENCY_SECONDS stays, even with its task gone (a retention under a day): a retry
    of the create then answers the same task id (now 404), never a second task billed again."""
    ids = [task_id for _, task_id, _ in found]
    marks = ", ".join("?" * len(ids))
    c = lambda name: _q(table.entity.column(name))
    with immediate(conn):
        locked = time.perf_counter()
        deleted = conn.execute(f"DELETE FROM {_q(table.entity.table)} WHERE {c('id')} IN ({marks}) AND "
                               f"{_prune_where(table, status, indexed=False)} RETURNING {c('id')}, {c('createdAt')}",
                               (*ids, status, cutoff, cutoff)).fetchall()
        pruned = [row[0] for row in deleted]
        if pruned:
            marks = ", ".join("?" * len(pruned))
            report.events += conn.execute(f"DELETE FROM task_events WHERE task_id IN ({marks})", pruned).rowcount
            # A key's created_at is its task's createdAt (create_task_once): the created_at index finds it.
            created = sorted({row[1] for row in deleted if row[1] <= now - IDEMPOTENCY_SECONDS})
            if created:
                report.keys += conn.execute(
                    f"DELETE FROM idempotency_keys WHERE created_at IN ({', '.join('?' * len(created))}) "
                    f"AND task_id IN ({marks})", (*created, *pruned)).rowcount
    held_ms = (time.perf_counter() - locked) * 1000
    report.tasks += len(pruned)
    report.batches += 1
    report.lock_ms.append(held_ms)
    report.longest_lock_ms = max(report.longest_lock_ms, held_ms)
    return pruned, held_ms
