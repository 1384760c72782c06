"""The internal API the processor and the worker call: fetch, claim, and report (docs/design.md §5).

Every route needs `Authorization: Bearer <INTERNAL_API_TOKEN>`. The views check
their input at the edge (query, body) and hand the decision to web/task_store.py,
the single writer. `<integration>` and `<report>` in the paths match only the
app's integrations and their report names (anything else is a 404 before a
view runs); the URL segment is the integration's name, not a Temporal namespace.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, abort, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

import logs
from web import current, db, metrics, task_store
from web.auth import require_internal_token
from web.commit_watch import Waited, long_poll
from web.edge import json_body, query_int, text
from web.task_store import Outcome, Report, ReportKind, TaskNotFound, TransitionRefused

MAX_LIMIT = 100
MAX_WAIT_MS = 30_000
MAX_ID_CHARS = 200
MAX_ERROR_CHARS = 10_000
REPORT_FIELDS = ("apiCallId", "status", "attempt", "taskId", "data", "error", "retryable")
REPORTABLE = ("queued", "held", "processing", "completed", "failed", "cancelled", "blocked")
log = logging.getLogger("web.tasks")

bp = Blueprint("internal_api", __name__)
bp.before_request(require_internal_token)


@bp.get("/api/<integration:name>/fetchPendingTasks")
def fetch_pending_tasks(name: str):
    """Claimable tasks, oldest first; with `waitMs`, an empty answer waits until a commit brings work."""
    limit = query_int("limit", 1, MAX_LIMIT, current_app.config["BATCH_SIZE"])
    wait_ms = query_int("waitMs", 0, MAX_WAIT_MS, 0)
    conn, table = db.get_db(), current.table(name)
    task_store.expire_stuck(conn, table)
    cancels_due = False

    def look() -> list[dict] | bool:
        nonlocal cancels_due
        tasks = task_store.fetch_claimable(conn, table, limit)
        cancels_due = not tasks and task_store.cancels_due(conn, table)
        return tasks or cancels_due

    waited = long_poll(conn, current_app.config["DATABASE_PATH"], wait_ms, look, **long_poll_context(name))
    body: dict[str, Any] = {"tasks": waited.found if isinstance(waited.found, list) else []}
    if cancels_due:  # nothing to claim, but cancels to deliver: a claim request takes them
        body["cancelsDue"] = True
    return long_poll_answer(name, body, waited, conn)


@bp.get("/api/<integration:name>/fetchDispatchedTasks")
def fetch_dispatched_tasks(name: str):
    """Tasks whose workflow Temporal owns, unchanged for `olderThanSeconds`: the reconciler's worklist.

    Paged: `after` is the previous answer's `next` (absent: from the start); `next`
    is null once the last page is served.
    """
    limit = query_int("limit", 1, MAX_LIMIT, current_app.config["BATCH_SIZE"])
    older_than = query_int("olderThanSeconds", 0, 86_400 * 7, 300)
    after = parse_cursor(request.args.get("after"))
    tasks = task_store.list_dispatched(db.get_db(), current.table(name), older_than, after, limit)
    last = tasks[-1] if len(tasks) == limit else None
    return jsonify({"tasks": tasks, "next": None if last is None else f"{last['createdAt']!r},{last['id']}"})


@bp.post("/api/<integration:name>/claimPendingTasks")
def claim_pending_tasks(name: str):
    """Claim the oldest claimable tasks, all in one transaction.

    Body (all optional): `{"limit": N, "waitMs": W, "dispatched": [{"apiCallId", "attempt"}, ...]}`.
    Answers `{"success": true, "tasks": [... each with "attempt"], "dispatched": [a result per item],
    "cancels": [{"id", "attempt", "status"}, ...], "stuckTimeoutSeconds": S}`: `cancels` are workflows to cancel
    (task_store.take_cancels); a claim not started within S seconds must be renewed (a `held` report), or it is
    rescued as stuck.
    The web process picks the tasks under the write lock, so concurrent processors never
    collide; `dispatched` confirms started workflows first, in the same commit. With
    `waitMs`, an empty claim waits (long poll) for a commit that brings work, and claims
    it at once: the caller must only ask to wait as long as it knows Temporal is up.
    """
    body = json_body(allow_empty=True)
    body = {} if body is None else body
    if not isinstance(body, dict):
        abort(400, "Body must be a JSON object")
    unknown = sorted(set(body) - {"limit", "waitMs", "dispatched"})
    if unknown:
        abort(400, f"Unknown field(s): {', '.join(unknown)}")
    limit = body_int(body, "limit", 1, MAX_LIMIT, current_app.config["BATCH_SIZE"])
    wait_ms = body_int(body, "waitMs", 0, MAX_WAIT_MS, 0)
    confirmations = parse_dispatched(body.get("dispatched", []))
    conn, table = db.get_db(), current.table(name)
    task_store.expire_stuck(conn, table)
    confirmed: list[Outcome | TaskNotFound | TransitionRefused] = []
    tasks: list[dict] = []
    cancels: list[dict] = []
    looks = 0

    def claim() -> bool:
        nonlocal looks
        looks += 1
        if looks == 1 or task_store.fetch_claimable(conn, table, 1):  # after a wake-up: only if it brought work
            claimed, outcomes = task_store.claim_next(conn, table, limit, confirmations if looks == 1 else ())
            tasks.extend(claimed)
            confirmed.extend(outcomes)
        cancels.extend(task_store.take_cancels(conn, table))  # a read unless some are due
        return bool(tasks or cancels)

    waited = long_poll(conn, current_app.config["DATABASE_PATH"], wait_ms, claim, **long_poll_context(name))
    for task in tasks:
        log_outcome(name, task["id"], Report.claim(), Outcome("queued", task["attempt"]))
    for (task_id, attempt), outcome in zip(confirmations, confirmed, strict=True):
        log_outcome(name, task_id, Report.dispatched(attempt), outcome)
    for cancel in cancels:
        logs.event(log, "cancel handed out", task=cancel["id"], attempt=cancel["attempt"], integration=name)
    return long_poll_answer(name, {"success": True, "tasks": tasks, "dispatched": [
        _batch_result(task_id, outcome) for (task_id, _), outcome in zip(confirmations, confirmed, strict=True)],
        "cancels": cancels, "stuckTimeoutSeconds": table.policy.stuck_timeout_seconds}, waited, conn)


def long_poll_context(name: str) -> dict[str, Any]:
    """long_poll's view of this request: its integration among the app's (for the budget's shares), the
    client's socket (under gunicorn or the dev server: a hang-up ends the wait) and the waiting gauge."""
    environ = request.environ
    return {"key": name, "keys": len(current.tables()), "waiting": metrics.waiting(name),
            "client": environ.get("gunicorn.socket") or environ.get("werkzeug.socket")}


def long_poll_answer(name: str, body: dict, waited: Waited, conn):
    """The answer; a declined wait adds `retryAfterMs`: no slot was free to wait in, ask again after that long
    (docs/design.md §5). Processors that do not know the field simply poll again. A blocked integration
    adds `blocked` (reason, since, probeAt), so a processor can say why it claims nothing."""
    block = task_store.get_block(conn, name)
    if block is not None:
        body["blocked"] = {key: block[key] for key in ("reason", "since", "probeAt")}
    if waited.retry_after_ms:
        body["retryAfterMs"] = waited.retry_after_ms
    if waited.client_gone:
        logs.event(log, "long poll ended: client gone", logging.DEBUG, integration=name)
    return jsonify(body)


@bp.post("/api/<integration:name>/<report:report_name>")
def report_task_event(name: str, report_name: str):
    """A workflow's progress report, a claim (`queued`) or a dispatch confirmation; or a JSON array of them."""
    if report_name != current.integration(name).report_api_name:
        abort(404, f"{name} has no endpoint {report_name}")
    body = json_body()
    if isinstance(body, list):
        return report_batch(name, body)
    task_id, report = parse_report(body)
    try:
        outcome = task_store.transition(db.get_db(), current.table(name), task_id, report)
    except TaskNotFound as exc:
        log_outcome(name, task_id, report, exc)
        abort(404, "Task not found")
    except TransitionRefused as exc:
        log_outcome(name, task_id, report, exc)
        abort(409, str(exc))
    log_outcome(name, task_id, report, outcome)
    return jsonify({"success": True, "status": outcome.status, "attempt": outcome.attempt,
                    "duplicate": outcome.duplicate})


def report_batch(name: str, items: list):
    """A JSON array of reports (a processor's confirmations): one transaction, a result per item."""
    if not 1 <= len(items) <= MAX_LIMIT:
        abort(400, f"A batch holds 1 to {MAX_LIMIT} reports, got {len(items)}")
    reports = []
    for index, item in enumerate(items):
        try:
            reports.append(parse_report(item))
        except HTTPException as exc:
            abort(400, f"Report {index}: {exc.description}")
    outcomes = task_store.transition_many(db.get_db(), current.table(name), reports)
    for (task_id, report), outcome in zip(reports, outcomes, strict=True):
        log_outcome(name, task_id, report, outcome)
    return jsonify({"success": True, "results": [
        _batch_result(task_id, outcome) for (task_id, _), outcome in zip(reports, outcomes, strict=True)]})


# -- input at the edge --

def parse_cursor(raw: str | None) -> tuple[float, str] | None:
    """`<createdAt>,<id>` as `fetchDispatchedTasks` hands it out; 400 if it is not one."""
    if raw is None:
        return None
    created, _, task_id = raw.partition(",")
    try:
        value = float(created)
    except ValueError:
        value = float("nan")
    if value != value or value in (float("inf"), float("-inf")) or not task_id or len(task_id) > MAX_ID_CHARS:
        abort(400, "after must be the `next` cursor of the previous answer")
    return value, text(task_id, "after")


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
        if report.attempt is None:  # null reads as "no attempt", which would make the item a claim
            abort(400, f"dispatched[{index}]: attempt must be a positive integer")
        confirmations.append((task_id, report.attempt))
    return confirmations


def parse_report(body: Any) -> tuple[str, Report]:
    """Check a report body's shape; 400 with the first problem found.

    Wire names: `apiCallId` is our task id, `taskId` the provider's job id (the
    external id). `queued` without `attempt` is a claim; with it, a dispatch confirmation. `held` renews a
    claim whose start is still under way (its processor lives), so the stuck rescue leaves it alone.
    """
    if not isinstance(body, dict):
        abort(400, "Body must be a JSON object")
    unknown = sorted(set(body) - set(REPORT_FIELDS))
    if unknown:
        abort(400, f"Unknown field(s): {', '.join(unknown)}")
    task_id = body.get("apiCallId")
    if not isinstance(task_id, str) or not task_id or len(task_id) > MAX_ID_CHARS:
        abort(400, f"apiCallId must be a non-empty string of at most {MAX_ID_CHARS} characters")
    status = body.get("status")
    if status not in REPORTABLE:
        abort(400, f"status must be one of {', '.join(REPORTABLE)}")
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
    if status == "queued":
        return task_id, Report.claim() if attempt is None else Report.dispatched(attempt)
    if status == "held":  # the claim's processor still holds it (its start waits for Temporal): renew it
        return task_id, Report.held(attempt)
    if status == "blocked":  # the create met an account-level refusal: hand the claim back, block the integration
        return task_id, Report.blocked(attempt, error)
    return task_id, Report.progress(status, attempt, external_id, data, error, retryable)


# -- answers and logs --

def log_outcome(integration: str, task_id: str, report: Report, outcome) -> None:
    """One line and one count per report: accepted transitions at INFO, refusals at DEBUG (lost races are routine)."""
    kind = report.kind.name.lower()
    if isinstance(outcome, Outcome):
        metrics.count_report(integration, kind, "duplicate" if outcome.duplicate else "accepted")
    else:
        metrics.count_report(integration, kind, "refused",
                             "not_found" if isinstance(outcome, TaskNotFound) else outcome.reason)
    if isinstance(outcome, Outcome):
        message = ("dispatch confirmed" if report.kind is ReportKind.DISPATCHED
                   else "duplicate report" if outcome.duplicate
                   else "claim renewed: its start is under way" if report.kind is ReportKind.HELD
                   else f"task {outcome.status}")
        logs.event(log, message, task=task_id, attempt=outcome.attempt, integration=integration,
                   external_id=report.external_id, error=report.error if report.status == "failed" else None)
        if report.kind is ReportKind.BLOCKED and not outcome.duplicate:
            logs.event(log, "integration blocked: no task is claimed but one probe per interval; the attempt is "
                       "refunded", logging.WARNING, integration=integration, task=task_id, reason=report.error)
        if outcome.resumed:
            logs.event(log, "integration resumed: the provider accepted a job", logging.WARNING,
                       integration=integration, task=task_id)
    else:
        logs.event(log, "report refused", logging.DEBUG, task=task_id, attempt=report.attempt,
                   integration=integration, status=report.status, reason=str(outcome))


def _batch_result(task_id: str, outcome) -> dict:
    if isinstance(outcome, TaskNotFound):
        return {"apiCallId": task_id, "success": False, "code": 404, "error": "Task not found"}
    if isinstance(outcome, TransitionRefused):
        return {"apiCallId": task_id, "success": False, "code": 409, "error": str(outcome)}
    return {"apiCallId": task_id, "success": True, "status": outcome.status, "attempt": outcome.attempt,
            "duplicate": outcome.duplicate}
