"""claimPendingTasks: the web process picks and claims the oldest claimable tasks in one transaction."""

import time

import pytest
from freezegun import freeze_time

from tests.conftest import AUTH, BACKENDS, IMAGE, USER, VIDEO

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)  # the same assertions on both stores

CLAIM = "/api/{}/claimPendingTasks"


def claim(tasks, namespace=VIDEO, **body):
    response = tasks.client.post(CLAIM.format(namespace), json=body, headers=AUTH)
    assert response.status_code == 200, response.json
    assert response.json["success"] is True
    return response.json


def test_claims_the_oldest_claimable_tasks_with_their_attempts(tasks):
    now = time.time()
    newest = tasks.put(created_at=now - 10)
    retry = tasks.put(status="failed", attempts=2, created_at=now - 40)
    stuck = tasks.put(status="queued", attempts=1, started_at=int(now) - 400, created_at=now - 30)
    oldest = tasks.put(created_at=now - 50)
    tasks.put(status="failed", attempts=1, retryable=False, created_at=now - 60)  # failed for good
    tasks.put(status="queued", attempts=1, started_at=int(now) - 400, dispatched_at=now - 399,
              created_at=now - 70)  # its workflow is started: Temporal's, not stuck
    tasks.put(status="processing", attempts=1, created_at=now - 80)

    answer = claim(tasks, limit=3)

    assert [(t["id"], t["attempt"]) for t in answer["tasks"]] == [(oldest, 1), (retry, 3), (stuck, 2)]
    first = answer["tasks"][0]
    assert first["status"] == "queued" and first["attempts"] == 1 and first["startedAt"] >= int(now)
    assert first["requestParams"] == {"prompt": "a cat on a skateboard"}
    for task_id, attempt in ((oldest, 1), (retry, 3), (stuck, 2)):
        row = tasks.row(task_id)
        assert (row["status"], row["attempts"], row["dispatched_at"]) == ("queued", attempt, None)
        assert [(e["status"], e["attempt"]) for e in tasks.events(task_id)][-1] == ("queued", attempt)
    assert [t["id"] for t in claim(tasks, limit=3)["tasks"]] == [newest]
    assert claim(tasks)["tasks"] == []


def test_claims_only_its_own_integration_and_defaults_to_the_batch_size(tasks):
    videos = [tasks.create(VIDEO) for _ in range(12)]
    image = tasks.create(IMAGE)
    assert [t["id"] for t in claim(tasks, IMAGE)["tasks"]] == [image]
    assert [t["id"] for t in claim(tasks, VIDEO)["tasks"]] == videos[:10]  # batchSize 10


def test_an_empty_body_claims_a_default_batch(tasks):
    task_id = tasks.create()
    response = tasks.client.post(CLAIM.format(VIDEO), headers=AUTH)
    assert response.status_code == 200 and [t["id"] for t in response.json["tasks"]] == [task_id]


def test_dispatched_confirmations_ride_along_and_are_judged_one_by_one(tasks):
    started = tasks.create()
    [task] = claim(tasks, limit=1)["tasks"]
    waiting = tasks.create()
    answer = claim(tasks, limit=5, dispatched=[
        {"apiCallId": started, "attempt": 1},
        {"apiCallId": started, "attempt": 2},  # stale
        {"apiCallId": "no-such-task", "attempt": 1},
    ])
    assert task["id"] == started
    assert [t["id"] for t in answer["tasks"]] == [waiting]
    assert [(r["success"], r.get("code")) for r in answer["dispatched"]] == [(True, None), (False, 409), (False, 404)]
    assert tasks.row(started)["dispatched_at"] is not None
    assert [e["status"] for e in tasks.events(started)] == ["pending", "queued"]  # a confirmation is no event


def test_a_claim_after_the_stuck_timeout_rescues_and_the_last_one_expires(tasks):
    with freeze_time("2026-11-27 12:00:00") as clock:
        task_id = tasks.create()
        assert claim(tasks)["tasks"][0]["attempt"] == 1
        clock.tick(299)
        assert claim(tasks)["tasks"] == []
        for attempt in range(2, 6):
            clock.tick(302)
            assert [(t["id"], t["attempt"]) for t in claim(tasks)["tasks"]] == [(task_id, attempt)]
        clock.tick(302)
        assert claim(tasks)["tasks"] == []
    row = tasks.row(task_id)
    assert row["status"] == "failed" and "no attempts left" in row["error"]


def test_a_held_claim_is_renewed_and_not_rescued_while_its_processor_holds_it(tasks):
    """A `held` report (the claim's processor lives; its start waits for Temporal) restarts the stuck clock of an
    undispatched claim at its attempt. A rescued claim's renewal is fenced off; a started one's changes nothing."""
    with freeze_time("2026-11-27 12:00:00") as clock:
        task_id = tasks.create()
        first = claim(tasks)
        assert first["stuckTimeoutSeconds"] == 300 and first["tasks"][0]["attempt"] == 1
        for _ in range(3):  # 3 x 200 s: twice the stuck timeout, renewed each time
            clock.tick(200)
            renewal = tasks.report(task_id, "held", attempt=1)
            assert renewal.status_code == 200 and renewal.json["duplicate"] is False, renewal.json
            assert claim(tasks)["tasks"] == []
        assert tasks.row(task_id)["started_at"] == int(time.time())
        assert tasks.report(task_id, "held").status_code == 400  # which attempt is held must be said
        clock.tick(301)  # renewals stopped (the processor died): rescued as before
        assert [t["attempt"] for t in claim(tasks)["tasks"]] == [2]
        stale = tasks.report(task_id, "held", attempt=1)
        assert stale.status_code == 409 and "Stale report" in stale.json["error"]
        claim(tasks, dispatched=[{"apiCallId": task_id, "attempt": 2}])
        renewed_at = tasks.row(task_id)["started_at"]
        clock.tick(10)
        assert tasks.report(task_id, "held", attempt=2).json["duplicate"] is True  # started: Temporal's now
        assert tasks.row(task_id)["started_at"] == renewed_at
    assert [(e["status"], e["attempt"]) for e in tasks.events(task_id)] == [("pending", 0), ("queued", 1),
                                                                           ("queued", 2)]  # renewals are no events


def test_a_claim_whose_cancel_is_asked_for_is_not_renewed(tasks):
    """It ages as before, so the cancel hand-out ends it after the stuck timeout even while its processor
    waits for Temporal (which would otherwise start a run only to cancel it)."""
    with freeze_time("2026-11-27 12:00:00") as clock:
        task_id = tasks.create()
        claim(tasks)
        claimed_at = tasks.row(task_id)["started_at"]
        assert tasks.client.post(f"/api/tasks/{task_id}/cancel", headers=USER).status_code == 202
        clock.tick(200)
        assert tasks.report(task_id, "held", attempt=1).json["duplicate"] is True
        assert tasks.row(task_id)["started_at"] == claimed_at
