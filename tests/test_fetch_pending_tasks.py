"""Seed plan step 2: which tasks fetchPendingTasks returns, in which order, to whom."""

import time

import pytest
from freezegun import freeze_time

from tests.conftest import BACKENDS, IMAGE, VIDEO

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)  # the same assertions on both stores


def ids(response):
    assert response.status_code == 200, response.json
    return [t["id"] for t in response.json["tasks"]]


def test_returns_pending_tasks_with_their_fields(tasks):
    task_id = tasks.create()
    [task] = tasks.fetch(limit=10).json["tasks"]
    assert task["id"] == task_id
    assert task["status"] == "pending"
    assert task["attempts"] == 0
    assert task["startedAt"] is None
    assert task["requestParams"] == {"prompt": "a cat on a skateboard"}
    assert isinstance(task["createdAt"], float)


def test_returns_failed_tasks_with_attempts_left(tasks):
    retry = tasks.put(status="failed", attempts=2)
    assert ids(tasks.fetch()) == [retry]


def test_skips_failed_tasks_with_attempts_exhausted(tasks):
    tasks.put(status="failed", attempts=5)
    assert ids(tasks.fetch()) == []


def test_skips_tasks_failed_for_good(tasks):
    tasks.put(status="failed", attempts=1, retryable=False)
    assert ids(tasks.fetch()) == []


def test_returns_stuck_queued_tasks_only_after_the_timeout(tasks):
    stuck = tasks.put(status="queued", attempts=1, started_at=int(time.time()) - 400)
    tasks.put(status="queued", attempts=1, started_at=int(time.time()) - 100)
    assert ids(tasks.fetch()) == [stuck]


def test_skips_stuck_claims_whose_workflow_is_started(tasks):
    tasks.put(status="queued", attempts=1, started_at=int(time.time()) - 4000, dispatched_at=time.time() - 3999)
    assert ids(tasks.fetch()) == []


def test_does_not_expire_an_exhausted_claim_whose_workflow_is_started(tasks):
    task_id = tasks.put(status="queued", attempts=5, started_at=int(time.time()) - 400, dispatched_at=1.0)
    assert ids(tasks.fetch()) == []
    assert tasks.row(task_id)["status"] == "queued"


def test_a_fresh_claim_becomes_stuck_when_time_passes(tasks):
    with freeze_time("2026-11-27 12:00:00") as clock:
        task_id = tasks.create()
        assert tasks.report(task_id, "queued").status_code == 200
        assert ids(tasks.fetch()) == []
        clock.tick(300)
        assert ids(tasks.fetch()) == []  # not yet older than the timeout
        clock.tick(2)
        assert ids(tasks.fetch()) == [task_id]


def test_exhausted_stuck_task_is_failed_not_left_in_queued(tasks):
    task_id = tasks.put(status="queued", attempts=5, started_at=int(time.time()) - 400)
    assert ids(tasks.fetch()) == []
    row = tasks.row(task_id)
    assert row["status"] == "failed"
    assert "no attempts left" in row["error"]
    assert [e["status"] for e in tasks.events(task_id)][-1] == "failed"


@pytest.mark.parametrize("status", ["processing", "completed"])
def test_skips_running_and_finished_tasks(tasks, status):
    tasks.put(status=status, attempts=1, started_at=int(time.time()) - 4000)
    assert ids(tasks.fetch()) == []


def test_orders_all_kinds_fifo_by_created_at(tasks):
    now = time.time()
    old = int(now) - 1000
    expected = [
        tasks.put(status="queued", attempts=1, started_at=old, created_at=now - 50),
        tasks.put(status="pending", created_at=now - 40),
        tasks.put(status="failed", attempts=1, created_at=now - 30),
        tasks.put(status="pending", created_at=now - 20),
        tasks.put(status="failed", attempts=3, created_at=now - 10),
    ]
    response = tasks.fetch()
    created = [t["createdAt"] for t in response.json["tasks"]]
    assert created == sorted(created)
    assert ids(response) == expected


def test_respects_limit_and_defaults_to_batch_size(tasks):
    for _ in range(12):
        tasks.create()
    assert len(ids(tasks.fetch(limit=2))) == 2
    assert len(ids(tasks.fetch())) == 10
    assert len(ids(tasks.fetch(limit=100))) == 12


def test_each_integration_sees_only_its_own_tasks(tasks):
    video, image = tasks.create(VIDEO), tasks.create(IMAGE)
    assert ids(tasks.fetch(VIDEO)) == [video]
    assert ids(tasks.fetch(IMAGE)) == [image]


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": "test-internal-token-0123"},
    {"Authorization": "Basic dGVzdC10b2tlbg=="},
    {"Authorization": "Bearer test-internal-token-0123 "},
])
def test_rejects_requests_without_the_token(tasks, headers):
    response = tasks.fetch(headers=headers)
    assert response.status_code == 401
    assert response.json == {"success": False, "error": "Missing or wrong internal API token"}


def test_accepts_the_token(tasks):
    assert tasks.fetch().status_code == 200


def test_a_long_poll_answers_as_soon_as_work_appears(app, tasks):
    import threading

    def create_later():
        time.sleep(0.3)
        with app.test_client() as other:
            other.post("/api/video/generate", json={"prompt": "late"})

    creator = threading.Thread(target=create_later)
    started = time.monotonic()
    creator.start()
    response = tasks.client.get("/api/fangzhouVideoGeneration/fetchPendingTasks?waitMs=5000",
                                headers={"Authorization": "Bearer test-internal-token-0123"})
    elapsed = time.monotonic() - started
    creator.join()
    assert [t["requestParams"]["prompt"] for t in response.json["tasks"]] == ["late"]
    assert 0.3 <= elapsed < 4  # woke on the commit, not at the 5 s timeout


def test_a_long_poll_with_no_work_returns_empty_at_its_timeout(tasks):
    started = time.monotonic()
    response = tasks.client.get("/api/fangzhouVideoGeneration/fetchPendingTasks?waitMs=300",
                                headers={"Authorization": "Bearer test-internal-token-0123"})
    assert response.json == {"tasks": []}
    assert time.monotonic() - started >= 0.3
