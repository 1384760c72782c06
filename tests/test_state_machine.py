"""Seed plan step 3 and every row of docs/design.md §3, allowed and refused, over HTTP."""

import time

import pytest
from freezegun import freeze_time

from dev import dbaccess
from tests.conftest import BACKENDS, IMAGE

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)  # the same assertions on both stores

OLD = -400  # started this many seconds from now: past the 300 s stuck timeout
FRESH = -100

# (given state, report, expected HTTP status, expected message fragment, state after, new event?)
CASES = {
    "pending -> queued (claim)": (
        dict(status="pending"), dict(status="queued"), 200, None, ("queued", 1), True),
    "failed -> queued (retry)": (
        dict(status="failed", attempts=2), dict(status="queued"), 200, None, ("queued", 3), True),
    "queued -> queued (rescue of a stuck claim)": (
        dict(status="queued", attempts=1, started=OLD), dict(status="queued"), 200, None, ("queued", 2), True),
    "queued -> processing": (
        dict(status="queued", attempts=1, started=FRESH), dict(status="processing", attempt=1, taskId="cgt-1"),
        200, None, ("processing", 1), True),
    "queued -> completed": (
        dict(status="queued", attempts=1, started=FRESH), dict(status="completed", attempt=1, data={"u": 1}),
        200, None, ("completed", 1), True),
    "queued -> failed": (
        dict(status="queued", attempts=1, started=FRESH), dict(status="failed", attempt=1, error="boom"),
        200, None, ("failed", 1), True),
    "processing -> completed": (
        dict(status="processing", attempts=2, started=FRESH), dict(status="completed", attempt=2),
        200, None, ("completed", 2), True),
    "processing -> failed": (
        dict(status="processing", attempts=2, started=FRESH), dict(status="failed", attempt=2, error="x"),
        200, None, ("failed", 2), True),
    "duplicate processing": (
        dict(status="processing", attempts=1, started=FRESH), dict(status="processing", attempt=1),
        200, None, ("processing", 1), False),
    "duplicate completed": (
        dict(status="completed", attempts=1, started=FRESH), dict(status="completed", attempt=1),
        200, None, ("completed", 1), False),
    "duplicate failed": (
        dict(status="failed", attempts=1, started=FRESH), dict(status="failed", attempt=1, error="x"),
        200, None, ("failed", 1), False),
    "queued -> queued refused before the stuck timeout": (
        dict(status="queued", attempts=1, started=FRESH), dict(status="queued"),
        409, "Cannot transition to queued from queued", ("queued", 1), False),
    "queued -> queued refused with attempts exhausted": (
        dict(status="queued", attempts=5, started=OLD), dict(status="queued"),
        409, "Cannot transition to queued from queued", ("queued", 5), False),
    "failed -> queued refused with attempts exhausted": (
        dict(status="failed", attempts=5), dict(status="queued"),
        409, "Cannot transition to queued from failed", ("failed", 5), False),
    "failed -> queued refused when not retryable": (
        dict(status="failed", attempts=1, retryable=False), dict(status="queued"),
        409, "Cannot transition to queued from failed", ("failed", 1), False),
    "processing -> queued refused": (
        dict(status="processing", attempts=1, started=OLD), dict(status="queued"),
        409, "Cannot transition to queued from processing", ("processing", 1), False),
    "completed -> queued refused (terminal)": (
        dict(status="completed", attempts=1, started=OLD), dict(status="queued"),
        409, "Cannot transition to queued from completed", ("completed", 1), False),
    "completed -> failed refused (terminal)": (
        dict(status="completed", attempts=1, started=OLD), dict(status="failed", attempt=1),
        409, "Cannot transition to failed from completed", ("completed", 1), False),
    "completed -> processing refused (terminal)": (
        dict(status="completed", attempts=1, started=OLD), dict(status="processing", attempt=1),
        409, "Cannot transition to processing from completed", ("completed", 1), False),
    "failed -> processing refused": (
        dict(status="failed", attempts=1), dict(status="processing", attempt=1),
        409, "Cannot transition to processing from failed", ("failed", 1), False),
    "pending -> processing refused (no claim yet)": (
        dict(status="pending"), dict(status="processing", attempt=1),
        409, "Stale report", ("pending", 0), False),
    "queued (stuck, attempts exhausted) -> failed by the web process, not left in queued": (
        dict(status="queued", attempts=5, started=OLD), None, 200, None, ("failed", 5), True),
    "stale attempt refused": (
        dict(status="processing", attempts=2, started=FRESH), dict(status="completed", attempt=1),
        409, "Stale report: attempt 1 is not the current attempt 2", ("processing", 2), False),
    "stale dispatch confirmation refused": (
        dict(status="queued", attempts=2, started=FRESH), dict(status="queued", attempt=1),
        409, "Stale report: attempt 1 is not the current attempt 2", ("queued", 2), False),
    "dispatch confirmed (no transition, no event)": (
        dict(status="queued", attempts=1, started=FRESH), dict(status="queued", attempt=1),
        200, None, ("queued", 1), False),
    "dispatch confirmed twice": (
        dict(status="queued", attempts=1, started=FRESH, dispatched_at=1.0), dict(status="queued", attempt=1),
        200, None, ("queued", 1), False),
    "dispatch confirmed after the workflow moved on": (
        dict(status="processing", attempts=1, started=FRESH), dict(status="queued", attempt=1),
        200, None, ("processing", 1), False),
    "queued -> queued refused for a dispatched claim, however old": (
        dict(status="queued", attempts=1, started=OLD, dispatched_at=1.0), dict(status="queued"),
        409, "workflow is started; Temporal owns it", ("queued", 1), False),
}


@pytest.mark.parametrize("given, report, code, message, after, new_event", CASES.values(), ids=CASES.keys())
def test_transition_table(tasks, given, report, code, message, after, new_event):
    given = dict(given)  # the case is shared by every backend's run: do not consume it
    started = given.pop("started", None)
    task_id = tasks.put(**given, started_at=None if started is None else int(time.time()) + started)
    events_before = len(tasks.events(task_id))

    if report is None:  # the web process's own move: any fetchPendingTasks sweeps exhausted stuck claims
        response = tasks.fetch()
        assert response.status_code == code and response.json == {"tasks": []}
        assert "no attempts left" in tasks.row(task_id)["error"]
    else:
        response = tasks.report(task_id, **report)
        assert response.status_code == code, response.json
        assert response.json["success"] is (code == 200)
    if message:
        assert message in response.json["error"]
    row = tasks.row(task_id)
    assert (row["status"], row["attempts"]) == after
    assert len(tasks.events(task_id)) == events_before + (1 if new_event else 0)
    if report and code == 200 and report["status"] == "queued" and "attempt" not in report:
        assert response.json["attempt"] == after[1]
        assert row["started_at"] == pytest.approx(time.time(), abs=2)
        assert tasks.events(task_id)[-1]["attempt"] == after[1]


def test_dispatch_confirmation_protects_a_claim_from_rescue(tasks):
    with freeze_time("2026-11-27 12:00:00") as clock:
        task_id = tasks.create()
        assert tasks.report(task_id, "queued").json["attempt"] == 1
        assert tasks.report(task_id, "queued", attempt=1).json["success"] is True
        assert tasks.row(task_id)["dispatched_at"] == time.time()
        clock.tick(3600)
        assert tasks.report(task_id, "queued").status_code == 409
        assert tasks.fetch().json["tasks"] == []
        assert tasks.report(task_id, "processing", attempt=1).status_code == 200
    assert [e["status"] for e in tasks.events(task_id)] == ["pending", "queued", "processing"]


def test_claim_is_accepted_from_pending(tasks):
    task_id = tasks.create()
    response = tasks.report(task_id, "queued")
    assert response.json == {"success": True, "status": "queued", "attempt": 1, "duplicate": False}
    assert tasks.row(task_id)["status"] == "queued"


def test_claim_of_unknown_task_is_404(tasks):
    response = tasks.report("non-existent-id", "queued")
    assert response.status_code == 404
    assert "not found" in response.json["error"]


def test_report_to_the_wrong_integration_is_404(tasks):
    image_task = tasks.create(IMAGE)
    assert tasks.report(image_task, "queued").status_code == 404  # video endpoint


def test_rescue_after_the_timeout_with_a_frozen_clock(tasks):
    with freeze_time("2026-11-27 12:00:00") as clock:
        task_id = tasks.create()
        assert tasks.report(task_id, "queued").json["attempt"] == 1
        clock.tick(299)
        assert tasks.report(task_id, "queued").status_code == 409
        clock.tick(2)
        assert tasks.report(task_id, "queued").json["attempt"] == 2
        assert tasks.report(task_id, "processing", attempt=1).status_code == 409  # the old attempt is fenced


def test_a_full_run_records_one_event_per_transition(tasks):
    task_id = tasks.create()
    tasks.report(task_id, "queued")
    tasks.report(task_id, "processing", attempt=1, taskId="cgt-42")
    tasks.report(task_id, "processing", attempt=1, taskId="cgt-42")  # an activity retry
    tasks.report(task_id, "failed", attempt=1, error="provider 500")
    tasks.report(task_id, "queued")
    tasks.report(task_id, "processing", attempt=2, taskId="cgt-43")
    done = tasks.report(task_id, "completed", attempt=2, data={"videoUrl": "https://v/1.mp4"})
    assert done.status_code == 200
    events = [(e["status"], e["attempt"]) for e in tasks.events(task_id)]
    assert events == [("pending", 0), ("queued", 1), ("processing", 1), ("failed", 1),
                      ("queued", 2), ("processing", 2), ("completed", 2)]
    task = tasks.client.get(f"/api/tasks/{task_id}").json
    assert task["externalId"] == "cgt-43"
    assert task["result"] == {"videoUrl": "https://v/1.mp4"}
    assert task["error"] is None


def test_events_table_is_append_only(tasks, db_target):
    task_id = tasks.create()
    with pytest.raises(Exception, match="append-only"):  # sqlite3.IntegrityError / psycopg's RaiseException
        dbaccess.execute(db_target, "UPDATE task_events SET status = 'completed' WHERE task_id = ?", (task_id,))
    with pytest.raises(Exception, match="append-only"):  # its task exists: its events stay
        dbaccess.execute(db_target, "DELETE FROM task_events WHERE task_id = ?", (task_id,))


def test_a_batch_of_reports_is_judged_item_by_item(tasks):
    pending, completed = tasks.create(), tasks.put(status="completed", attempts=1)
    body = [{"apiCallId": pending, "status": "queued"}, {"apiCallId": pending, "status": "queued"},
            {"apiCallId": completed, "status": "queued"}, {"apiCallId": "missing", "status": "queued"}]
    response = tasks.client.post("/api/fangzhouVideoGeneration/reportFangzhouVideoResult", json=body,
                                 headers={"Authorization": "Bearer test-internal-token-0123"})
    assert response.status_code == 200
    results = response.json["results"]
    assert [(r["apiCallId"], r["success"], r.get("code"), r.get("attempt")) for r in results] == [
        (pending, True, None, 1), (pending, False, 409, None), (completed, False, 409, None),
        ("missing", False, 404, None)]
    assert "Cannot transition to queued from completed" in results[2]["error"]
    assert [e["status"] for e in tasks.events(pending)] == ["pending", "queued"]
    assert [e["status"] for e in tasks.events(completed)] == ["pending"]
