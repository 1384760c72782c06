"""Cancel (issue 15, docs/design.md §3.5) through the app: the request, the hand-out to processors, the report.

Whole-stack cancels (a workflow cancelled through Temporal, a provider job cancelled) are in
tests/test_cancel_stack.py.
"""

import threading
import time

import pytest

from dev import dbaccess
from tests.conftest import AUTH, BACKENDS, IMAGE, TABLE, VIDEO, snapshot
from web import db, task_store

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)  # the same assertions on both stores


def cancel(client, task_id, **kwargs):
    return client.post(f"/api/tasks/{task_id}/cancel", **kwargs)


def claim(client, namespace=VIDEO, **body):
    answer = client.post(f"/api/{namespace}/claimPendingTasks", json={"limit": 10, **body}, headers=AUTH)
    assert answer.status_code == 200, answer.json
    return answer.json


def statuses(tasks, task_id):
    return [e["status"] for e in tasks.events(task_id)]


def test_pending_task_is_cancelled_at_once(client, tasks):
    task_id = tasks.create()
    answer = cancel(client, task_id)
    assert answer.status_code == 200
    assert answer.json["status"] == "cancelled" and answer.json["cancelRequestedAt"] is not None
    assert answer.json["error"] is None
    assert statuses(tasks, task_id) == ["pending", "cancelled"]
    assert tasks.events(task_id)[-1]["error"] == "cancelled by the client"
    assert claim(client)["tasks"] == []  # never claimed


def test_cancelling_twice_is_idempotent(client, tasks, db_target):
    task_id = tasks.create()
    first = cancel(client, task_id)
    before = snapshot(db_target)
    again = cancel(client, task_id)
    assert again.status_code == 200 and again.json == first.json
    assert snapshot(db_target) == before


def test_failed_task_waiting_for_its_retry_is_cancelled(client, tasks):
    task_id = tasks.put(status="failed", attempts=1, retry_at=time.time() + 600)
    answer = cancel(client, task_id)
    assert answer.status_code == 200 and answer.json["status"] == "cancelled"
    assert tasks.row(task_id)["retryable"] == 0 and tasks.row(task_id)["retry_at"] is None


@pytest.mark.parametrize("status, retryable", [("completed", True), ("failed", False)])
def test_finished_task_answers_409_and_changes_nothing(client, tasks, db_target, status, retryable):
    task_id = tasks.put(status=status, attempts=1, retryable=retryable)
    before = snapshot(db_target)
    answer = cancel(client, task_id)
    assert answer.status_code == 409
    assert f"Cannot cancel a {status} task: it is finished" in answer.json["error"]
    assert snapshot(db_target) == before


def test_unknown_task_is_404_and_the_client_key_is_required(client, tasks, db_target):
    assert cancel(client, "no-such-task").status_code == 404
    task_id = tasks.create()
    before = snapshot(db_target)
    assert cancel(client, task_id, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert cancel(client, task_id, headers=AUTH).status_code == 401  # the internal token is not a client key
    assert snapshot(db_target) == before


@pytest.mark.parametrize("status", ["queued", "processing"])
def test_active_task_is_marked_and_its_cancel_handed_to_a_processor(client, tasks, status):
    task_id = tasks.put(status=status, attempts=1, started_at=int(time.time()), dispatched_at=time.time())
    answer = cancel(client, task_id)
    assert answer.status_code == 202
    assert answer.json["status"] == status and answer.json["cancelRequestedAt"] is not None
    assert statuses(tasks, task_id) == ["pending"]  # no transition yet: the workflow reports it
    assert cancel(client, task_id).status_code == 202  # asked again: the same, nothing more
    assert tasks.fetch().json == {"tasks": [], "cancelsDue": True}  # an idle processor's wait wakes for it
    answer = claim(client)
    assert answer["tasks"] == [] and answer["cancels"] == [{"id": task_id, "attempt": 1, "status": status}]
    assert claim(client)["cancels"] == []  # handed out: not again within CANCEL_RESEND_SECONDS
    assert "cancelsDue" not in tasks.fetch().json


def test_an_undelivered_cancel_is_handed_out_again(app, tasks):
    task_id = tasks.put(status="processing", attempts=1, started_at=int(time.time()), dispatched_at=time.time())
    assert cancel(app.test_client(), task_id).status_code == 202
    table = app.extensions["task_tables"][VIDEO]
    with app.app_context():
        conn = db.get_db()
        now = time.time()
        assert [c["id"] for c in task_store.take_cancels(conn, table, now=now)] == [task_id]
        assert task_store.take_cancels(conn, table, now=now + 1) == []
        later = now + task_store.CANCEL_RESEND_SECONDS + 1
        assert [c["id"] for c in task_store.take_cancels(conn, table, now=later)] == [task_id]


def test_the_workflow_reports_cancelled_and_late_reports_are_refused(client, tasks):
    task_id = tasks.put(status="processing", attempts=2, started_at=int(time.time()), dispatched_at=time.time())
    assert cancel(client, task_id).status_code == 202
    note = "cancelled; the provider's job was cancelled too"
    answer = tasks.report(task_id, "cancelled", attempt=2, taskId="cgt-1", error=note)
    assert answer.status_code == 200 and answer.json["status"] == "cancelled"
    row = tasks.row(task_id)
    assert (row["status"], row["retryable"], row["error"], row["external_id"]) == ("cancelled", 0, None, "cgt-1")
    assert tasks.events(task_id)[-1]["error"] == note
    assert tasks.report(task_id, "cancelled", attempt=2).json["duplicate"] is True
    for status in ("processing", "completed", "failed"):  # the cancelled run, late: fenced
        assert tasks.report(task_id, status, attempt=2).status_code == 409
    assert claim(client)["tasks"] == [] and claim(client)["cancels"] == []
    assert cancel(client, task_id).status_code == 200  # cancelled: asking again is a no-op


def test_a_stale_cancelled_report_is_refused(client, tasks):
    task_id = tasks.put(status="processing", attempts=2, started_at=int(time.time()), dispatched_at=time.time())
    assert tasks.report(task_id, "cancelled", attempt=1).status_code == 409
    assert tasks.row(task_id)["status"] == "processing"


def test_an_abandoned_claim_with_a_cancel_is_cancelled_not_rescued(client, tasks):
    """A claim whose workflow start was never confirmed, past the stuck timeout: no workflow would report, so
    the web process cancels it itself (and still hands the cancel out once, in case a run exists)."""
    old = int(time.time()) - 3600
    task_id = tasks.put(status="queued", attempts=1, started_at=old)
    assert cancel(client, task_id).status_code == 202
    answer = claim(client)
    assert answer["tasks"] == []  # not rescued as a stuck claim
    assert answer["cancels"] == [{"id": task_id, "attempt": 1, "status": "cancelled"}]
    assert statuses(tasks, task_id)[-1] == "cancelled" and tasks.row(task_id)["status"] == "cancelled"


def test_a_claim_of_a_task_being_cancelled_is_refused(client, tasks, db_target):
    task_id = tasks.put(status="queued", attempts=1, started_at=int(time.time()) - 3600)
    dbaccess.execute(db_target, f"UPDATE {TABLE[VIDEO]} SET cancel_requested_at = ? WHERE id = ?",
                     (time.time(), task_id))
    answer = tasks.report(task_id, "queued")
    assert answer.status_code == 409 and "its cancel is asked for" in answer.json["error"]


def test_cancel_racing_completion_has_one_outcome(app, tasks):
    """The workflow's `cancelled` and `completed` reports for the same attempt, sent at once over many tasks:
    each task takes exactly one of them (one terminal event), and the other is refused with 409."""
    ids = [tasks.put(IMAGE, status="processing", attempts=1, started_at=int(time.time()), dispatched_at=time.time())
           for _ in range(40)]
    answers: dict[tuple[str, str], int] = {}
    start = threading.Barrier(2 * len(ids))

    def send(task_id, status):
        client = app.test_client()
        start.wait()
        body = {"data": {"imageUrls": ["https://x/1.png"]}} if status == "completed" else {"error": "cancelled"}
        answers[task_id, status] = tasks.__class__(client, tasks.db_path).report(
            task_id, status, IMAGE, attempt=1, **body).status_code

    threads = [threading.Thread(target=send, args=(t, s)) for t in ids for s in ("completed", "cancelled")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outcomes = set()
    for task_id in ids:
        codes = sorted(answers[task_id, s] for s in ("completed", "cancelled"))
        assert codes == [200, 409], (task_id, answers)
        endings = [s for s in statuses(tasks, task_id) if s in ("completed", "cancelled")]
        assert endings == [tasks.row(task_id, IMAGE)["status"]]
        outcomes.add(endings[0])
    assert outcomes <= {"completed", "cancelled"}


def test_operator_cancels_from_the_cli(app, tasks):
    runner = app.test_cli_runner()
    pending = tasks.create()
    result = runner.invoke(args=["tasks", "cancel", pending])
    assert result.exit_code == 0 and f"Task {pending} is cancelled." in result.output
    assert tasks.events(pending)[-1]["error"] == "cancelled by an operator"
    active = tasks.put(status="processing", attempts=1, started_at=int(time.time()), dispatched_at=time.time())
    result = runner.invoke(args=["tasks", "cancel", active])
    assert result.exit_code == 0 and "its cancel is asked for" in result.output
    done = tasks.put(status="completed", attempts=1)
    result = runner.invoke(args=["tasks", "cancel", done])
    assert result.exit_code == 1 and "it is finished" in result.output
    assert runner.invoke(args=["tasks", "cancel", "nope"]).exit_code == 1


def test_a_failure_while_cancelling_is_final(client, tasks):
    task_id = tasks.put(status="processing", attempts=1, started_at=int(time.time()), dispatched_at=time.time())
    assert cancel(client, task_id).status_code == 202
    assert tasks.report(task_id, "failed", attempt=1, error="provider down").status_code == 200
    row = tasks.row(task_id)
    assert (row["status"], row["retryable"], row["retry_at"]) == ("failed", 0, None)
    assert claim(client)["tasks"] == []


def test_a_claim_handed_back_while_cancelling_is_cancelled(client, tasks):
    task_id = tasks.put(status="queued", attempts=1, started_at=int(time.time()), dispatched_at=time.time())
    assert cancel(client, task_id).status_code == 202
    assert tasks.report(task_id, "blocked", attempt=1, error="no credits").status_code == 200
    row = tasks.row(task_id)
    assert (row["status"], row["attempts_refunded"]) == ("cancelled", 1)
    assert statuses(tasks, task_id)[-1] == "cancelled"


def test_a_cancel_never_sent_goes_before_a_resend(app, tasks):
    """Delivery order: a cancel not yet handed out comes before one due to be sent again (NULL first on both
    stores: PostgreSQL puts NULLs last unless told), so a user's fresh cancel never waits behind resends."""
    resent, fresh = (tasks.put(status="processing", attempts=1, started_at=int(time.time()),
                               dispatched_at=time.time()) for _ in range(2))
    client = app.test_client()
    table = app.extensions["task_tables"][VIDEO]
    with app.app_context():
        conn = db.get_db()
        now = time.time()
        assert cancel(client, resent).status_code == 202
        assert [c["id"] for c in task_store.take_cancels(conn, table, now=now)] == [resent]
        assert cancel(client, fresh).status_code == 202
        later = now + task_store.CANCEL_RESEND_SECONDS + 1  # both due: the resend, and the never-sent one
        assert [c["id"] for c in task_store.take_cancels(conn, table, limit=1, now=later)] == [fresh]
