"""Backoff between attempts (retryAt) and the per-integration cap on active tasks, judged by the task store."""

from __future__ import annotations

import threading
import time

import pytest
import requests
from freezegun import freeze_time

from dev import dbaccess
from tests.conftest import AUTH, BACKENDS, IMAGE, TABLE, VIDEO, db_config
from web.task_store import Policy

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)  # the same assertions on both stores
DEFAULT = Policy()


def claim(tasks, namespace=VIDEO, **body):
    answer = tasks.client.post(f"/api/{namespace}/claimPendingTasks", json=body, headers=AUTH)
    assert answer.status_code == 200, answer.json
    return [t["id"] for t in answer.json["tasks"]]


def retry_at(tasks, task_id, namespace=VIDEO):
    return tasks.row(task_id, namespace)["retry_at"]


def test_the_default_schedule_outlasts_a_30_minute_outage():
    """Four waits between five attempts: base 240 s doubling, capped at 3600 s, half of each wait fixed."""
    waits = [[DEFAULT.retry_delay(f"task-{n}", attempt) for n in range(200)] for attempt in range(1, 5)]
    for attempt, seen in enumerate(waits, 1):
        ceiling = min(3600, 240 * 2 ** (attempt - 1))
        assert all(ceiling / 2 <= w <= ceiling for w in seen)
        assert max(seen) - min(seen) > ceiling / 4  # jitter spreads a burst of failures
    assert sum(min(seen) for seen in waits) >= 30 * 60
    assert DEFAULT.retry_delay("same", 2) == DEFAULT.retry_delay("same", 2)  # the same failure, the same wait
    assert Policy(retry_base_seconds=0).retry_delay("x", 3) == 0


def test_a_retryable_failure_waits_for_its_retry_at(app, tasks):
    app.extensions["task_tables"][VIDEO] = table = app.extensions["task_tables"][VIDEO].__class__(
        VIDEO, app.extensions["task_tables"][VIDEO].entity, Policy(retry_base_seconds=60, retry_max_seconds=600))
    task_id = tasks.create()
    with freeze_time() as clock:
        assert claim(tasks) == [task_id]
        assert tasks.report(task_id, "failed", attempt=1, error="provider 500").status_code == 200
        failed_at, due = time.time(), retry_at(tasks, task_id)
        assert time.time() + 30 <= due <= time.time() + 60
        assert claim(tasks) == [] and tasks.fetch().json["tasks"] == []
        refused = tasks.report(task_id, "queued")  # the original claim protocol is refused too
        assert refused.status_code == 409 and "retry is due in" in refused.json["error"]
        clock.tick(due - time.time() + 0.01)
        assert claim(tasks) == [task_id]
    row = tasks.row(task_id)
    assert (row["status"], row["attempts"], row["retry_at"]) == ("queued", 2, None)
    assert table.policy.retry_delay(task_id, 1) == pytest.approx(due - failed_at, abs=0.01)


def test_a_final_failure_has_no_retry_at_and_an_operator_retry_is_due_now(app, tasks):
    task_id = tasks.create()
    claim(tasks)
    tasks.report(task_id, "failed", attempt=1, error="blocked prompt", retryable=False)
    assert (tasks.row(task_id)["retryable"], retry_at(tasks, task_id)) == (0, None)
    result = app.test_cli_runner().invoke(args=["tasks", "retry", task_id])
    assert result.exit_code == 0, result.output
    assert (tasks.row(task_id)["status"], retry_at(tasks, task_id)) == ("pending", None)
    assert claim(tasks) == [task_id]


def test_the_user_api_shows_retry_at(tasks):
    task_id = tasks.put(status="failed", attempts=1, retry_at=time.time() + 100)
    shown = tasks.client.get(f"/api/tasks/{task_id}").json
    assert shown["retryAt"] == pytest.approx(time.time() + 100, abs=5)


@pytest.fixture
def capped(db_target):
    from app import create_app
    from tests.conftest import SECRETS, SignedInClient

    app = create_app({**db_config(db_target), **SECRETS, "RETRY_BASE_SECONDS": 0, "FANGZHOU_MAX_ACTIVE": 2,
                      "STUCK_TIMEOUT_SECONDS": 60})
    app.test_client_class = SignedInClient
    return app


def test_the_cap_limits_claims_and_the_rest_wait_in_fifo_order(capped, db_target):
    from tests.conftest import Tasks

    tasks = Tasks(capped.test_client(), db_target)
    ids = [tasks.create() for _ in range(5)]
    assert claim(tasks, limit=10) == ids[:2]
    assert claim(tasks, limit=10) == [] and tasks.fetch().json["tasks"] == []  # a waiting processor is not woken
    tasks.report(ids[0], "processing", attempt=1)
    assert claim(tasks) == []  # processing is active too
    tasks.report(ids[0], "completed", attempt=1, data={})
    assert claim(tasks, limit=10) == [ids[2]]
    image = tasks.create(IMAGE)
    assert claim(tasks, IMAGE) == [image]  # each integration has its own cap (none set for images)


def test_a_stuck_claim_is_rescued_even_at_the_cap(capped, db_target):
    from tests.conftest import Tasks

    tasks = Tasks(capped.test_client(), db_target)
    stuck = tasks.put(status="queued", attempts=1, started_at=int(time.time()) - 600)
    tasks.put(status="processing", attempts=1)
    waiting = tasks.create()
    assert claim(tasks, limit=10) == [stuck]  # at the cap: the rescue takes no new room, the pending task waits
    assert waiting not in claim(tasks, limit=10)


@pytest.mark.slow
def test_the_cap_is_exact_across_concurrent_claimants(web):
    app = web(FANGZHOU_MAX_ACTIVE=7)
    ids = [app.create() for _ in range(60)]
    claimed, lock = [], threading.Lock()

    def claimant():
        session = requests.Session()
        for _ in range(10):
            answer = session.post(f"{app.url}/api/{VIDEO}/claimPendingTasks", json={"limit": 3}, headers=AUTH,
                                  timeout=30).json()
            with lock:
                claimed.extend(t["id"] for t in answer["tasks"])

    threads = [threading.Thread(target=claimant) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claimed) == len(set(claimed)) == 7
    [active] = dbaccess.query(app.db_path, f"SELECT COUNT(*) AS n FROM {TABLE[VIDEO]} "
                                           "WHERE status IN ('queued', 'processing')")
    assert active["n"] == 7
    assert sorted(claimed) == sorted(ids[:7])  # FIFO: the oldest seven


def test_the_dashboard_shows_when_a_failed_task_runs_again(tasks):
    task_id = tasks.put(status="failed", attempts=1, retry_at=time.time() + 300)
    page = tasks.client.get(f"/tasks/{task_id}").text
    assert 'id="retry-at"' in page and "(in 29" in page
