"""The internal HTTP APIs every integration serves: fetchPendingTasks and its report endpoint.

These views validate at the edge (token, query, body) and hand the decision to
task_store, the single writer. Only the web process imports this module.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

from flask import abort, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

import logs
import task_store
from commit_watch import CommitWaiter
from db import get_db
from integrations import CLAIM_PENDING_TASKS_API_NAME, FETCH_PENDING_TASKS_API_NAME, Api, EntityMapping

MAX_LIMIT = 100
MAX_WAIT_MS = 30_000
MAX_ID_CHARS = 200
MAX_ERROR_CHARS = 10_000
log = logging.getLogger("web.tasks")
REPORT_FIELDS = ("apiCallId", "status", "attempt", "taskId", "data", "error", "retryable")


def require_internal_token() -> None:
    """401 unless the request carries `Authorization: Bearer <INTERNAL_API_TOKEN>`."""
    expected = f"Bearer {current_app.config['INTERNAL_API_TOKEN']}".encode()
    given = request.headers.get("Authorization", "").encode()
    if not hmac.compare_digest(given, expected):
        abort(401, "Missing or wrong internal API token")


def query_int(name: str, low: int, high: int, default: int) -> int:
    """An integer query parameter in low..high (400 otherwise), or `default` when absent."""
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        abort(400, f"{name} must be an integer from {low} to {high}, got {raw[:50]!r}")
    return int(raw)


def create_fetch_pending_tasks_api(
    namespace: str,
    entity: EntityMapping,
    max_attempts: int = 5,
    stuck_timeout_seconds: int = 300,
    default_limit: int = 10,
) -> Api:
    """GET /api/{namespace}/fetchPendingTasks: claimable tasks, oldest first."""
    policy = task_store.Policy(max_attempts, stuck_timeout_seconds)

    def fetch_pending_tasks():
        """With `waitMs`, an empty answer waits (long poll) until a commit makes work appear."""
        require_internal_token()
        limit = query_int("limit", 1, MAX_LIMIT, default_limit)
        wait_ms = query_int("waitMs", 0, MAX_WAIT_MS, 0)
        conn = get_db()
        task_store.expire_stuck(conn, entity, namespace, policy)
        commits = CommitWaiter(conn, current_app.config["DATABASE_PATH"])
        tasks = task_store.fetch_claimable(conn, entity, policy, limit)
        deadline = time.monotonic() + wait_ms / 1000
        while not tasks and commits.wait(deadline):  # another connection committed: look again
            tasks = task_store.fetch_claimable(conn, entity, policy, limit)
        return jsonify({"tasks": tasks})

    fetch_pending_tasks.__name__ = f"{namespace}_fetch_pending_tasks"
    return Api(namespace, FETCH_PENDING_TASKS_API_NAME, ("GET",), fetch_pending_tasks)


def create_claim_pending_tasks_api(
    namespace: str,
    entity: EntityMapping,
    max_attempts: int = 5,
    stuck_timeout_seconds: int = 300,
    default_limit: int = 10,
) -> Api:
    """POST /api/{namespace}/claimPendingTasks: claim the oldest claimable tasks, all in one transaction.

    Body (all optional): `{"limit": N, "waitMs": W, "dispatched": [{"apiCallId", "attempt"}, ...]}`.
    Answers `{"success": true, "tasks": [... each with "attempt"], "dispatched": [a result per item]}`.
    The server picks the tasks under the write lock, so concurrent processors never
    collide; `dispatched` confirms started workflows (as `queued` + `attempt` reports do).
    With `waitMs`, an empty claim waits (long poll) for a commit that brings work, and
    claims it at once: the caller must only ask to wait as long as it knows Temporal is up.
    """
    policy = task_store.Policy(max_attempts, stuck_timeout_seconds)

    def claim_pending_tasks():
        require_internal_token()
        body = request.get_json(force=True, silent=True) if request.get_data() else {}
        if not isinstance(body, dict):
            abort(400, "Body must be a JSON object")
        unknown = sorted(set(body) - {"limit", "waitMs", "dispatched"})
        if unknown:
            abort(400, f"Unknown field(s): {', '.join(unknown)}")
        limit = body_int(body, "limit", 1, MAX_LIMIT, default_limit)
        wait_ms = body_int(body, "waitMs", 0, MAX_WAIT_MS, 0)
        confirmations = parse_dispatched(body.get("dispatched", []))
        conn = get_db()
        task_store.expire_stuck(conn, entity, namespace, policy)
        commits = CommitWaiter(conn, current_app.config["DATABASE_PATH"])
        tasks, confirmed = task_store.claim_next(conn, entity, namespace, policy, limit, confirmations)
        deadline = time.monotonic() + wait_ms / 1000
        while not tasks and commits.wait(deadline):  # another connection committed: claim if it brought work
            if task_store.fetch_claimable(conn, entity, policy, 1):
                tasks, _ = task_store.claim_next(conn, entity, namespace, policy, limit)
        claim = task_store.Report("queued")
        for task in tasks:
            log_outcome(namespace, task["id"], claim, task_store.Outcome("queued", task["attempt"]))
        for (task_id, attempt), outcome in zip(confirmations, confirmed, strict=True):
            log_outcome(namespace, task_id, task_store.Report("queued", attempt), outcome)
        return jsonify({"success": True, "tasks": tasks, "dispatched": [
            _batch_result(task_id, outcome) for (task_id, _), outcome in zip(confirmations, confirmed, strict=True)]})

    claim_pending_tasks.__name__ = f"{namespace}_claim_pending_tasks"
    return Api(namespace, CLAIM_PENDING_TASKS_API_NAME, ("POST",), claim_pending_tasks)


def body_int(body: dict, name: str, low: int, high: int, default: int) -> int:
    """An integer field of a JSON body in low..high (400 otherwise), or `default` when absent."""
    value = body.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        abort(400, f"{name} must be an integer from {low} to {high}")
    return value


def parse_dispatched(items: Any) -> list[tuple[str, int]]:
    """`[{"apiCallId", "attempt"}]`, the claims whose workflows are started; 400 with the first problem."""
    if not isinstance(items, list) or len(items) > MAX_LIMIT:
        abort(400, f"dispatched must be a list of at most {MAX_LIMIT} items")
    confirmations = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != {"apiCallId", "attempt"}:
            abort(400, f"dispatched[{index}] must be an object with exactly apiCallId and attempt")
        try:
            task_id, report = parse_report({**item, "status": "queued"})
        except HTTPException as exc:
            abort(400, f"dispatched[{index}]: {exc.description}")
        confirmations.append((task_id, report.attempt))
    return confirmations


def create_report_api(
    namespace: str,
    name: str,
    entity: EntityMapping,
    max_attempts: int = 5,
    stuck_timeout_seconds: int = 300,
) -> Api:
    """POST /api/{namespace}/{name}: a claim (`queued`) or a workflow's progress report."""
    policy = task_store.Policy(max_attempts, stuck_timeout_seconds)

    def report_task_event():
        require_internal_token()
        body = request.get_json(force=True, silent=True)
        if isinstance(body, list):
            return report_batch(body)
        task_id, report = parse_report(body)
        try:
            outcome = task_store.transition(get_db(), entity, namespace, task_id, report, policy)
        except task_store.TaskNotFound:
            abort(404, "Task not found")
        except task_store.TransitionRefused as exc:
            log_outcome(namespace, task_id, report, exc)
            abort(409, str(exc))
        log_outcome(namespace, task_id, report, outcome)
        return jsonify({"success": True, "status": outcome.status, "attempt": outcome.attempt,
                        "duplicate": outcome.duplicate})

    def report_batch(items: list):
        """A JSON array of reports (a processor's batch claim): one transaction, a result per item."""
        if not 1 <= len(items) <= MAX_LIMIT:
            abort(400, f"A batch holds 1 to {MAX_LIMIT} reports, got {len(items)}")
        reports = []
        for index, item in enumerate(items):
            try:
                reports.append(parse_report(item))
            except HTTPException as exc:
                abort(400, f"Report {index}: {exc.description}")
        outcomes = task_store.transition_many(get_db(), entity, namespace, reports, policy)
        for (task_id, report), outcome in zip(reports, outcomes, strict=True):
            log_outcome(namespace, task_id, report, outcome)
        return jsonify({"success": True, "results": [
            _batch_result(task_id, outcome) for (task_id, _), outcome in zip(reports, outcomes, strict=True)]})

    report_task_event.__name__ = f"{namespace}_{name}"
    return Api(namespace, name, ("POST",), report_task_event)


def log_outcome(namespace: str, task_id: str, report: task_store.Report, outcome) -> None:
    """One line per report: accepted transitions at INFO, refusals at DEBUG (lost races are routine)."""
    if isinstance(outcome, task_store.Outcome):
        message = ("dispatch confirmed" if report.status == "queued" and report.attempt is not None
                   else "duplicate report" if outcome.duplicate else f"task {outcome.status}")
        logs.event(log, message, task=task_id, attempt=outcome.attempt, namespace=namespace,
                   external_id=report.external_id, error=report.error if report.status == "failed" else None)
    else:
        logs.event(log, "report refused", logging.DEBUG, task=task_id, attempt=report.attempt, namespace=namespace,
                   status=report.status, reason=str(outcome))


def _batch_result(task_id: str, outcome) -> dict:
    if isinstance(outcome, task_store.TaskNotFound):
        return {"apiCallId": task_id, "success": False, "code": 404, "error": "Task not found"}
    if isinstance(outcome, task_store.TransitionRefused):
        return {"apiCallId": task_id, "success": False, "code": 409, "error": str(outcome)}
    return {"apiCallId": task_id, "success": True, "status": outcome.status, "attempt": outcome.attempt,
            "duplicate": outcome.duplicate}


def parse_report(body: Any) -> tuple[str, task_store.Report]:
    """Check a report body's shape; 400 with the first problem found."""
    if not isinstance(body, dict):
        abort(400, "Body must be a JSON object")
    unknown = sorted(set(body) - set(REPORT_FIELDS))
    if unknown:
        abort(400, f"Unknown field(s): {', '.join(unknown)}")
    task_id = body.get("apiCallId")
    if not isinstance(task_id, str) or not task_id or len(task_id) > MAX_ID_CHARS:
        abort(400, f"apiCallId must be a non-empty string of at most {MAX_ID_CHARS} characters")
    status = body.get("status")
    if status not in task_store.REPORTABLE:
        abort(400, f"status must be one of {', '.join(task_store.REPORTABLE)}")
    attempt = body.get("attempt")
    if attempt is not None and (not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1):
        abort(400, "attempt must be a positive integer")
    if status != "queued" and attempt is None:
        abort(400, f"attempt is required when reporting {status}")
    external_id = body.get("taskId")
    if external_id is not None and (not isinstance(external_id, str) or len(external_id) > MAX_ID_CHARS):
        abort(400, f"taskId must be a string of at most {MAX_ID_CHARS} characters")
    error = body.get("error")
    if error is not None and (not isinstance(error, str) or len(error) > MAX_ERROR_CHARS):
        abort(400, f"error must be a string of at most {MAX_ERROR_CHARS} characters")
    retryable = body.get("retryable", True)
    if not isinstance(retryable, bool):
        abort(400, "retryable must be a boolean")
    data = body.get("data")
    if data is not None and not isinstance(data, (dict, list)):
        abort(400, "data must be an object or a list")
    return task_id, task_store.Report(status, attempt, external_id, data, error, retryable)
