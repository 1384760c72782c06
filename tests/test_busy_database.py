"""A database that cannot take a request in time (a lock held elsewhere past its timeout) is a 503 with
Retry-After, never a 500, and the request changes nothing: the processor and the worker send it again."""

import sqlite3

import psycopg
import pytest

from dev import dbaccess
from tests.conftest import BACKENDS, VIDEO, snapshot
from web import db, pg

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)


@pytest.fixture
def short_lock_waits(monkeypatch):
    """Lock waits of 0.2 s instead of 30 s (SQLite's busy timeout) and 5 s (PostgreSQL's lock_timeout)."""
    monkeypatch.setattr(db, "BUSY_TIMEOUT_SECONDS", 0.2)
    monkeypatch.setattr(pg, "LOCK_TIMEOUT", "200ms")


def hold_the_task(target, task_id):
    """Another session holding what a cancel must write: the task's row (PostgreSQL), the write lock (SQLite)."""
    if target.startswith("postgresql://"):
        other = psycopg.connect(target)
        other.execute("SELECT * FROM video_tasks WHERE id = %s FOR UPDATE", (task_id,))
        return other
    other = sqlite3.connect(target, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    return other


def test_a_lock_held_past_its_timeout_is_a_503_that_changes_nothing(client, tasks, db_target, short_lock_waits):
    task_id = tasks.create(VIDEO)
    before = snapshot(db_target)
    other = hold_the_task(db_target, task_id)
    try:
        response = client.post(f"/api/tasks/{task_id}/cancel")
    finally:
        other.rollback()
        other.close()
    assert response.status_code == 503, response.json
    assert response.headers["Retry-After"] == "1"
    assert response.json == {"success": False, "error": "The database is busy; try again shortly"}
    assert snapshot(db_target) == before
    assert client.post(f"/api/tasks/{task_id}/cancel").status_code == 200  # sent again, it lands


def test_a_fold_that_cannot_run_never_fails_the_create_it_follows(client, tasks, db_target, short_lock_waits,
                                                                   monkeypatch, backend):
    """PostgreSQL folds the dashboard counters after a create commits: a fold that fails is logged, and the
    create is still answered 201 (a 503 would say nothing changed, and a retry would make a second task)."""
    from web import task_store

    if backend != "postgres":
        pytest.skip("SQLite keeps one counter row per key: nothing to fold")
    tasks.create(VIDEO)
    monkeypatch.setattr(task_store, "_folded_at", float("-inf"))  # a fold is due
    other = psycopg.connect(db_target)
    other.execute("SELECT * FROM task_counts FOR SHARE")  # the fold's DELETE must wait: past lock_timeout
    try:
        response = client.post("/api/video/generate", json={"prompt": "after a fold that fails"})
    finally:
        other.rollback()
        other.close()
    assert response.status_code == 201, response.json
    assert len(dbaccess.query(db_target, "SELECT id FROM video_tasks")) == 2
