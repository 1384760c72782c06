"""PostgreSQL long polls wake by LISTEN/NOTIFY (web/pg_wakeup.py): within moments of a commit that makes work
claimable, made on another connection or in another process; never for a rolled-back transaction; by the
fallback re-check for work that becomes claimable by time alone; with a burst of commits coalesced into few
notifies; and without holding a pooled connection while they sleep."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from dev import dbaccess
from tests.conftest import AUTH, VIDEO
from web import db, pg, pg_wakeup, task_store

pytestmark = pytest.mark.parametrize("backend", ["postgres"], indirect=True)
POLL = f"/api/{VIDEO}/fetchPendingTasks?waitMs="


def table_of(app):
    return app.extensions["task_tables"][VIDEO]


class Poll:
    """A long poll of fetchPendingTasks in a thread of its own; `answered_at` is when its answer came."""

    def __init__(self, app, wait_ms: int):
        self.answer = self.answered_at = None
        self.thread = threading.Thread(target=self._run, args=(app, wait_ms), daemon=True)
        self.thread.start()

    def _run(self, app, wait_ms):
        response = app.test_client().get(POLL + str(wait_ms), headers=AUTH)
        self.answered_at = time.monotonic()
        self.answer = response.json

    def join(self, timeout=10.0):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the long poll never answered"
        return self.answer


def waiting(app, count=1):
    """Until `count` polls wait on the listener (they have looked once and found nothing)."""
    url = app.config["DATABASE_URL"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = pg_wakeup._listeners.get((__import__("os").getpid(), url, url))
        if found is not None and len(found.cond._waiters) >= count:
            return found
        time.sleep(0.005)
    raise AssertionError("the long polls never got to wait")


def test_a_create_on_another_connection_wakes_a_long_poll_at_once(app, db_target):
    table = table_of(app)
    poll = Poll(app, 10_000)
    waiting(app)
    conn = pg.connect(db_target)
    try:
        task = task_store.create_task(conn, table, {"prompt": "x"})
        committed = time.monotonic()
        answer = poll.join()
    finally:
        conn.close()
    assert [t["id"] for t in answer["tasks"]] == [task["id"]]
    print(f"woke {1000 * (poll.answered_at - committed):.1f} ms after the commit")
    assert poll.answered_at - committed < 0.1  # the fallback re-check would take up to 1 s


def test_a_create_in_another_process_wakes_a_long_poll_at_once(app, db_target):
    poll = Poll(app, 10_000)
    waiting(app)
    script = ("import sys, time; from app import create_app; from web import pg, task_store; "
              "from tests.conftest import SECRETS, VIDEO; "
              "app = create_app({'DATABASE_URL': sys.argv[1], **SECRETS}); "
              "conn = pg.connect(sys.argv[1]); "
              "task_store.create_task(conn, app.extensions['task_tables'][VIDEO], {'prompt': 'x'}); "
              "print(time.time(), flush=True)")
    done = subprocess.run([sys.executable, "-c", script, db_target], capture_output=True, text=True, timeout=60,
                          cwd=str(db.ROOT))
    assert done.returncode == 0, done.stderr
    committed_wall = float(done.stdout.split()[-1])
    answer = poll.join()
    lag = poll.answered_at - (time.monotonic() - (time.time() - committed_wall))
    assert len(answer["tasks"]) == 1
    print(f"woke {1000 * lag:.1f} ms after another process's commit")
    assert lag < 0.1, lag


def test_a_rolled_back_create_wakes_nobody(app, db_target):
    table = table_of(app)
    sent = pg_wakeup.notifier(db_target).sent
    poll = Poll(app, 700)  # less than the 1 s fallback: only a notify could wake it early
    listener = waiting(app)
    received = listener.received
    conn = pg.connect(db_target)
    try:
        with pytest.raises(RuntimeError), db.immediate(conn):
            task_store._insert_task(conn, table, {"prompt": "x"}, time.time())
            conn.mark_ready(table.integration)
            raise RuntimeError("the request fails after its insert")
    finally:
        conn.close()
    began = time.monotonic()
    answer = poll.join()
    assert answer == {"tasks": []}
    assert poll.answered_at - began > 0.5  # it slept to its deadline
    assert pg_wakeup.notifier(db_target).sent == sent and listener.received == received
    assert dbaccess.query(db_target, "SELECT count(*) AS n FROM video_tasks") == [{"n": 0}]


def test_work_claimable_by_time_alone_is_found_by_the_fallback_recheck(app, tasks, db_target):
    task_id = tasks.put(status="failed", attempts=1, retry_at=time.time() + 0.4)  # due in 0.4 s, nobody notifies
    began = time.monotonic()
    answer = app.test_client().get(POLL + "5000", headers=AUTH).json
    took = time.monotonic() - began
    assert [t["id"] for t in answer["tasks"]] == [task_id]
    assert 0.3 < took < pg_wakeup.FALLBACK_SECONDS + 0.5


def test_a_burst_of_creates_is_coalesced_into_few_notifies(app, db_target):
    table = table_of(app)
    notifier = pg_wakeup.notifier(db_target)
    listener = pg_wakeup.listener(db_target)
    sent, noted, received = notifier.sent, notifier.noted, listener.received
    conn = pg.connect(db_target)
    began = time.monotonic()
    try:
        for i in range(1000):
            task_store.create_task(conn, table, {"prompt": f"t{i}"})
    finally:
        conn.close()
    took = time.monotonic() - began
    time.sleep(3 * pg_wakeup.COALESCE_SECONDS + 0.2)  # the trailing notify
    count = notifier.sent - sent
    print(f"1000 creates in {took:.2f}s: {count} notifies sent, {listener.received - received} received")
    assert notifier.noted - noted == 1000
    assert 1 <= count <= took / pg_wakeup.COALESCE_SECONDS + 2
    assert count < 1000 / 4
    assert listener.received - received >= count  # other tests' schemas share the channel: at least ours


def test_only_commits_that_bring_work_notify(app, tasks, db_target):
    task_id = tasks.create()
    notifier = pg_wakeup.notifier(db_target)
    time.sleep(0.05)
    sent = notifier.noted
    claimed = tasks.client.post(f"/api/{VIDEO}/claimPendingTasks", json={}, headers=AUTH).json["tasks"]
    assert [t["id"] for t in claimed] == [task_id]
    assert tasks.report(task_id, "queued", attempt=1).status_code == 200
    assert tasks.report(task_id, "processing", attempt=1).status_code == 200
    assert notifier.noted == sent  # a claim, a dispatch confirmation and progress wake nobody
    assert table_of(app).policy.max_active is not None
    assert tasks.report(task_id, "completed", attempt=1, data={"url": "u"}).status_code == 200
    assert notifier.noted == sent + 1  # under the video cap, a finished task leaves room for a claim
    other = tasks.create()
    tasks.client.post(f"/api/{VIDEO}/claimPendingTasks", json={}, headers=AUTH)
    assert tasks.report(other, "failed", attempt=1, error="boom").status_code == 200  # retryable
    assert notifier.noted == sent + 3  # the create, the retryable failure


def test_a_sleeping_long_poll_holds_no_pooled_connection(app, db_target, monkeypatch):
    """More polls wait than the pool has connections, and a create still gets one at once and wakes them."""
    monkeypatch.setattr(pg, "POOL_MAX", 2)
    pg.close_pools(db_target)
    polls = [Poll(app, 10_000) for _ in range(5)]
    waiting(app, 5)
    began = time.monotonic()
    response = app.test_client().post("/api/video/generate", json={"prompt": "x"},
                                      headers={"Authorization": "Bearer test-client-key-0123456789"})
    assert response.status_code == 201
    assert time.monotonic() - began < 2  # the pool's timeout is 30 s
    answers = [poll.join() for poll in polls]
    assert all(len(a["tasks"]) == 1 for a in answers)  # each fetch sees it (a fetch claims nothing)
    assert pg.pool(db_target).get_stats()["pool_max"] == 2
