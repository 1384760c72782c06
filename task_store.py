"""The one module that writes task state (DESIGN §3, §4).

Every write runs inside `BEGIN IMMEDIATE` (so concurrent claimants, in any
process, queue for SQLite's write lock instead of racing), re-reads the task,
asks `decide()` whether the report is allowed, applies it as a conditional
UPDATE (status and attempts in the WHERE) and appends its event in the same
transaction. A refused report writes nothing.

Exceptions (the HTTP layer maps them to status codes):

    TaskNotFound        404  no task with that id in this integration's table
    TransitionRefused   409  the state machine refuses the report (incl. stale attempts)
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from integrations import EntityMapping

STATUSES = ("pending", "queued", "processing", "completed", "failed")
REPORTABLE = ("queued", "processing", "completed", "failed")
# Reports other than a claim: which statuses each current status may move to.
ALLOWED = {"queued": ("processing", "completed", "failed"), "processing": ("completed", "failed")}
EXPIRE_BATCH = 100


class TaskNotFound(Exception):
    """Task not found"""


class TransitionRefused(Exception):
    """The state machine refuses this report."""


@dataclass(frozen=True)
class Policy:
    """How many claims a task gets, and when a claim counts as abandoned."""

    max_attempts: int = 5
    stuck_timeout_seconds: int = 300


@dataclass(frozen=True)
class Report:
    """A report of a task's new status; `attempt` is required for all but a claim."""

    status: str
    attempt: int | None = None
    external_id: str | None = None
    data: Any = None
    error: str | None = None
    retryable: bool = True


@dataclass(frozen=True)
class Outcome:
    status: str
    attempt: int
    duplicate: bool = False


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction that takes the write lock up front (no lock upgrade deadlocks)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def decide(task: dict, report: Report, policy: Policy, now: float) -> dict | None:
    """The field changes of an accepted report, None for a duplicate; raises TransitionRefused."""
    current, attempts = task["status"], task["attempts"]
    if report.status == "pending":  # an operator's retry (the CLI); not reachable over HTTP
        if current != "failed":
            raise TransitionRefused(f"Cannot retry a {current} task: only a failed task can be retried")
        return {"status": "pending", "retryable": 1, "error": None, "_event_error": "retried by an operator"}
    if report.status == "queued" and report.attempt is not None:
        return _confirm_dispatch(task, report, now)
    if report.status == "queued":
        _check_claimable(task, policy, now)
        return {
            "status": "queued", "attempts": attempts + 1, "startedAt": int(now), "dispatchedAt": None,
            "externalId": None, "result": None, "error": None,
        }
    if report.attempt != attempts:
        raise TransitionRefused(
            f"Stale report: attempt {report.attempt} is not the current attempt {attempts}"
        )
    if report.status == current:
        return None
    if report.status not in ALLOWED.get(current, ()):
        raise TransitionRefused(f"Cannot transition to {report.status} from {current}")
    changes: dict[str, Any] = {"status": report.status}
    if report.external_id is not None:
        changes["externalId"] = report.external_id
    if report.status == "completed":
        changes["result"] = _dump(report.data)
    if report.status == "failed":
        changes["error"] = report.error or "failed (no message given)"
        # Failed for good is decided here, once: the retry index then never holds it.
        changes["retryable"] = 1 if report.retryable and attempts < policy.max_attempts else 0
    return changes


def _confirm_dispatch(task: dict, report: Report, now: float) -> dict | None:
    """`queued` with an attempt: the processor confirms that attempt's workflow is started.

    Not a transition (no status change, no event): it marks the claim as owned by
    Temporal, so it is never rescued as stuck however long the workflow waits
    for a worker. A confirmation arriving after the workflow moved on is a no-op.
    """
    current, attempts = task["status"], task["attempts"]
    if report.attempt != attempts:
        raise TransitionRefused(f"Stale report: attempt {report.attempt} is not the current attempt {attempts}")
    if current == "queued" and task["dispatchedAt"] is None:
        return {"dispatchedAt": now}
    if current in ("queued", "processing", "completed", "failed"):
        return None
    raise TransitionRefused(f"Cannot confirm the dispatch of a {current} task")


def _check_claimable(task: dict, policy: Policy, now: float) -> None:
    current, attempts = task["status"], task["attempts"]
    refusal = f"Cannot transition to queued from {current}"
    if current == "pending":
        return
    if current == "failed":
        if not task["retryable"]:
            raise TransitionRefused(f"{refusal}: the task failed for good (not retryable)")
        if attempts >= policy.max_attempts:
            raise TransitionRefused(f"{refusal}: all {policy.max_attempts} attempts are used")
        return
    if current == "queued":
        if task["dispatchedAt"] is not None:
            raise TransitionRefused(f"{refusal}: attempt {attempts}'s workflow is started; Temporal owns it")
        if attempts >= policy.max_attempts:
            raise TransitionRefused(f"{refusal}: all {policy.max_attempts} attempts are used")
        if (task["startedAt"] or 0) < now - policy.stuck_timeout_seconds:
            return
        raise TransitionRefused(f"{refusal}: attempt {attempts} was claimed less than "
                                f"{policy.stuck_timeout_seconds}s ago")
    raise TransitionRefused(refusal)


def transition(
    conn: sqlite3.Connection,
    entity: EntityMapping,
    namespace: str,
    task_id: str,
    report: Report,
    policy: Policy,
    now: float | None = None,
) -> Outcome:
    """Apply one report to one task, atomically with its event."""
    now = time.time() if now is None else now
    with immediate(conn):
        return _apply(conn, entity, namespace, task_id, report, policy, now)


def transition_many(
    conn: sqlite3.Connection,
    entity: EntityMapping,
    namespace: str,
    reports: list[tuple[str, Report]],
    policy: Policy,
    now: float | None = None,
) -> list[Outcome | TaskNotFound | TransitionRefused]:
    """Apply several reports in one write transaction; each is judged on its own.

    A refused report writes nothing and does not undo the others: its slot in
    the result holds the exception. One transaction per batch is what makes a
    processor's batch claim cost one lock and one commit instead of N.
    """
    now = time.time() if now is None else now
    with immediate(conn):
        return _apply_each(conn, entity, namespace, reports, policy, now)


def _apply_each(conn, entity, namespace, reports, policy, now) -> list[Outcome | TaskNotFound | TransitionRefused]:
    """Each report on its own (inside the caller's transaction): an outcome, or the refusal in its slot."""
    results: list[Outcome | TaskNotFound | TransitionRefused] = []
    for task_id, report in reports:
        try:
            results.append(_apply(conn, entity, namespace, task_id, report, policy, now))
        except (TaskNotFound, TransitionRefused) as exc:
            results.append(exc)
    return results


def claim_next(
    conn: sqlite3.Connection,
    entity: EntityMapping,
    namespace: str,
    policy: Policy,
    limit: int,
    confirmations: list[tuple[str, int]] = (),
    now: float | None = None,
) -> tuple[list[dict], list[Outcome | TaskNotFound | TransitionRefused]]:
    """Claim the `limit` oldest claimable tasks in one write transaction; (claimed tasks, confirmation outcomes).

    Choosing and claiming under one write lock is what lets any number of
    processors pull from the same backlog without ever picking the same task:
    no claim is lost to a race, so no request is wasted on one. Each claim still
    goes through `decide()` and writes its `queued` event. `confirmations`
    (taskId, attempt) of started workflows are applied first, in the same commit.
    Each claimed task carries `attempt`, the number its workflow must be started with.
    """
    now = time.time() if now is None else now
    claimed = []
    with immediate(conn):
        confirmed = _apply_each(conn, entity, namespace,
                                [(task_id, Report("queued", attempt)) for task_id, attempt in confirmations],
                                policy, now)
        for task in fetch_claimable(conn, entity, policy, limit, now):
            try:
                outcome = _apply(conn, entity, namespace, task["id"], Report("queued"), policy, now)
            except TransitionRefused:  # cannot happen under the lock; if it did, claim the others
                continue
            claimed.append({**task, "status": outcome.status, "attempts": outcome.attempt,
                            "startedAt": int(now), "attempt": outcome.attempt})
    return claimed, confirmed


def _apply(conn, entity, namespace, task_id, report, policy, now) -> Outcome:
    task = _select(conn, entity, task_id)
    if task is None:
        raise TaskNotFound("Task not found")
    changes = decide(task, report, policy, now)
    if changes is None:
        return Outcome(task["status"], task["attempts"], duplicate=True)
    event_error = changes.pop("_event_error", None)
    _update(conn, entity, task, changes, now)
    attempt = changes.get("attempts", task["attempts"])
    if "status" not in changes:  # a dispatch confirmation: no transition, no event
        return Outcome(task["status"], attempt)
    _append_event(conn, namespace, task_id, changes["status"], attempt, now,
                  external_id=changes.get("externalId"), data=changes.get("result"),
                  error=changes.get("error") or event_error)
    return Outcome(changes["status"], attempt)


def create_task(
    conn: sqlite3.Connection,
    entity: EntityMapping,
    namespace: str,
    request_params: dict,
    now: float | None = None,
) -> dict:
    """Insert a pending task and its `pending` event; return the task."""
    now = time.time() if now is None else now
    task_id = str(uuid.uuid4())
    row = {
        "id": task_id, "status": "pending", "attempts": 0, "startedAt": None,
        "requestParams": json.dumps(request_params), "createdAt": now, "updatedAt": now,
        "retryable": 1,
    }
    columns = ", ".join(_q(entity.column(f)) for f in row)
    marks = ", ".join("?" for _ in row)
    with immediate(conn):
        conn.execute(f"INSERT INTO {_q(entity.table)} ({columns}) VALUES ({marks})", list(row.values()))
        _append_event(conn, namespace, task_id, "pending", 0, now)
    return get_task(conn, entity, task_id)


def expire_stuck(
    conn: sqlite3.Connection, entity: EntityMapping, namespace: str, policy: Policy,
    now: float | None = None,
) -> list[str]:
    """Fail queued claims that are stuck with every attempt used, so none sits in `queued` forever."""
    now = time.time() if now is None else now
    c = entity.column
    cutoff = now - policy.stuck_timeout_seconds
    candidates = [row[0] for row in conn.execute(
        f"SELECT {_q(c('id'))} FROM {_q(entity.table)} WHERE {_q(c('status'))} = 'queued' "
        f"AND {_q(c('attempts'))} >= ? AND +{_q(c('startedAt'))} < ? "  # + : use the attempts index
        f"AND {_q(c('dispatchedAt'))} IS NULL LIMIT ?",
        (policy.max_attempts, cutoff, EXPIRE_BATCH),
    )]
    expired = []
    for task_id in candidates:
        with immediate(conn):
            task = _select(conn, entity, task_id)
            if not (task and task["status"] == "queued" and (task["startedAt"] or 0) < cutoff
                    and task["attempts"] >= policy.max_attempts and task["dispatchedAt"] is None):
                continue
            error = (f"Attempt {task['attempts']} of {policy.max_attempts} made no progress within "
                     f"{policy.stuck_timeout_seconds}s of its claim; no attempts left")
            _update(conn, entity, task, {"status": "failed", "error": error, "retryable": 0}, now)
            _append_event(conn, namespace, task_id, "failed", task["attempts"], now, error=error)
            expired.append(task_id)
    return expired


def fetch_claimable(
    conn: sqlite3.Connection, entity: EntityMapping, policy: Policy, limit: int,
    now: float | None = None,
) -> list[dict]:
    """Claimable tasks, oldest createdAt first: pending, retry due, stuck queued (DESIGN §3).

    A queued claim is stuck only if its workflow start was never confirmed
    (dispatchedAt is NULL): a started workflow waiting for a worker is Temporal's.

    Each kind is read in its index's order and cut by its own LIMIT, so the cost
    follows `limit`, not the table size. Stuck claims are picked oldest claim
    first (their index order); the merged batch is ordered by createdAt. The unary
    `+` on attempts keeps the planner on the index that serves each kind's order.
    """
    now = time.time() if now is None else now
    c = lambda name: _q(entity.column(name))  # noqa: E731
    table = _q(entity.table)
    select = (f"SELECT {c('id')} AS id, {c('status')} AS status, {c('startedAt')} AS startedAt, "
              f"{c('attempts')} AS attempts, {c('requestParams')} AS requestParams, "
              f"{c('createdAt')} AS createdAt FROM {table}")
    sql = f"""
        SELECT * FROM (SELECT * FROM ({select} WHERE {c('status')} = 'pending'
                                      ORDER BY {c('createdAt')} LIMIT :limit)
        UNION ALL
        SELECT * FROM ({select} WHERE {c('status')} = 'failed' AND {c('retryable')} = 1
                       AND +{c('attempts')} < :max ORDER BY {c('createdAt')} LIMIT :limit)
        UNION ALL
        SELECT * FROM ({select} WHERE {c('status')} = 'queued' AND {c('dispatchedAt')} IS NULL
                       AND {c('startedAt')} < :cutoff AND +{c('attempts')} < :max
                       ORDER BY {c('startedAt')} LIMIT :limit))
        ORDER BY createdAt LIMIT :limit
    """
    params = {"limit": limit, "max": policy.max_attempts, "cutoff": now - policy.stuck_timeout_seconds}
    return [_decode(dict(row)) for row in conn.execute(sql, params)]


def get_task(conn: sqlite3.Connection, entity: EntityMapping, task_id: str) -> dict | None:
    """The task as the API shows it (JSON fields decoded), or None."""
    task = _select(conn, entity, task_id)
    return _decode(task) if task else None


def find_task(conn: sqlite3.Connection, integrations: list, task_id: str) -> tuple[Any, dict | None]:
    """The integration whose table holds `task_id` and the task, or (None, None)."""
    for integration in integrations:
        task = get_task(conn, integration.entity, task_id)
        if task is not None:
            return integration, task
    return None, None


def list_events(conn: sqlite3.Connection, task_id: str) -> list[dict]:
    """A task's events, oldest first."""
    rows = conn.execute(
        "SELECT status, attempt, external_id AS externalId, data, error, created_at AS createdAt "
        "FROM task_events WHERE task_id = ? ORDER BY id", (task_id,),
    )
    return [{**dict(row), "data": _load(row["data"])} for row in rows]


def list_tasks(conn: sqlite3.Connection, entity: EntityMapping, status: str | None = None,
               limit: int = 50) -> list[dict]:
    """The newest tasks (optionally of one status), each status read through its (status, createdAt) index."""
    statuses = [status] if status else list(STATUSES)
    c = lambda name: _q(entity.column(name))  # noqa: E731
    parts = [f"SELECT * FROM (SELECT {_all_columns(entity)} FROM {_q(entity.table)} WHERE {c('status')} = ? "
             f"ORDER BY {c('createdAt')} DESC LIMIT ?)" for _ in statuses]
    sql = " UNION ALL ".join(parts) + " ORDER BY createdAt DESC LIMIT ?"
    params = [value for s in statuses for value in (s, limit)] + [limit]
    return [_decode(dict(row)) for row in conn.execute(sql, params)]


def count_by_status(conn: sqlite3.Connection, entity: EntityMapping) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    rows = conn.execute(f"SELECT {_q(entity.column('status'))}, COUNT(*) FROM {_q(entity.table)} "
                        f"GROUP BY {_q(entity.column('status'))}")
    counts.update(dict(rows.fetchall()))
    return counts


def oldest_pending_created_at(conn: sqlite3.Connection, entity: EntityMapping) -> float | None:
    c = entity.column
    row = conn.execute(f"SELECT MIN({_q(c('createdAt'))}) FROM {_q(entity.table)} "
                       f"WHERE {_q(c('status'))} = 'pending'").fetchone()
    return row[0]


# -- helpers --

def _q(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _all_columns(entity: EntityMapping) -> str:
    """Every mapped column, aliased to its field name."""
    return ", ".join(f"{_q(col)} AS {_q(field)}" for field, col in entity.columns.items())


def _select(conn: sqlite3.Connection, entity: EntityMapping, task_id: str) -> dict | None:
    row = conn.execute(
        f"SELECT {_all_columns(entity)} FROM {_q(entity.table)} WHERE {_q(entity.column('id'))} = ?", (task_id,)
    ).fetchone()
    return dict(row) if row else None


def _update(conn: sqlite3.Connection, entity: EntityMapping, task: dict, changes: dict, now: float) -> None:
    changes = {**changes, "updatedAt": now}
    assignments = ", ".join(f"{_q(entity.column(f))} = ?" for f in changes)
    cursor = conn.execute(
        f"UPDATE {_q(entity.table)} SET {assignments} WHERE {_q(entity.column('id'))} = ? "
        f"AND {_q(entity.column('status'))} = ? AND {_q(entity.column('attempts'))} = ?",
        [*changes.values(), task["id"], task["status"], task["attempts"]],
    )
    if cursor.rowcount != 1:  # impossible under BEGIN IMMEDIATE; refuse rather than guess
        raise TransitionRefused(f"Cannot transition to {changes.get('status', task['status'])} from {task['status']}")


def _append_event(conn, namespace, task_id, status, attempt, now, external_id=None, data=None, error=None):
    conn.execute(
        "INSERT INTO task_events (namespace, task_id, status, attempt, external_id, data, error, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (namespace, task_id, status, attempt, external_id, data, error, now),
    )


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
