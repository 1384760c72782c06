"""The periodic prune on PostgreSQL: one pruner across every process and host, by a session advisory lock held on
a connection of its own (web/retention.py); a lost connection loses the lock, and another takes over."""

from __future__ import annotations

import time

import pytest

from dev import dbaccess
from tests.conftest import IMAGE, SECRETS, TABLE, VIDEO, wait_until
from web import pg, retention
from web.retention import PRUNE_LOCK, PeriodicPrune

pytestmark = pytest.mark.parametrize("backend", ["postgres"], indirect=True)
DAY = 86_400
OLD = time.time() - 10 * DAY


def tables(app):
    return list(app.extensions["task_tables"].values())


def make(tasks, namespace=VIDEO, status="completed"):
    task_id = tasks.create(namespace)
    dbaccess.execute(tasks.db_path, f"UPDATE {TABLE[namespace]} SET status = ?, retryable = 0, attempts = 1, "
                                    "created_at = ?, updated_at = ? WHERE id = ?", (status, OLD, OLD + 60, task_id))
    return task_id


def exists(tasks, task_id):
    return any(dbaccess.query(tasks.db_path, f"SELECT 1 FROM {t} WHERE id = ?", (task_id,)) for t in TABLE.values())


def lock_holder(url):
    """Another host's pruner: a session of its own holding the prune lock."""
    conn = pg.connect(url)
    assert conn.execute_pg("SELECT pg_try_advisory_lock(hashtextextended(current_schema(), %s))",
                           (PRUNE_LOCK,)).fetchone()[0]
    return conn


def test_one_pruner_across_hosts_and_a_stop_lets_another_take_over(app, tasks, db_target):
    doomed, live = make(tasks), make(tasks, status="processing")
    other_host = lock_holder(db_target)
    first = PeriodicPrune(db_target, tables(app), 7 * DAY, interval_seconds=0.05).start()
    time.sleep(0.3)
    assert not first.holds_lock and exists(tasks, doomed)  # the other host prunes (here: holds the lock)

    other_host.close()  # that host's worker exits: the server drops its lock
    wait_until(lambda: not exists(tasks, doomed), message="the first takes over")
    second = PeriodicPrune(db_target, tables(app), 7 * DAY, interval_seconds=0.05).start()
    later = make(tasks, IMAGE, "failed")
    wait_until(lambda: not exists(tasks, later), message="the next run")
    assert first.holds_lock and not second.holds_lock

    first.stop()
    assert not first.thread.is_alive() and not first.holds_lock
    last = make(tasks)
    wait_until(lambda: second.holds_lock and not exists(tasks, last), message="the second takes over")
    second.stop()
    assert exists(tasks, live)


def test_a_pruner_whose_lock_connection_dies_stops_pruning_until_it_holds_the_lock_again(app, db_target,
                                                                                        pg_server):
    """Driven by hand (no thread) so the order is certain: each interval starts with _hold_lock."""
    pruner = PeriodicPrune(db_target, tables(app), 7 * DAY, interval_seconds=60)
    assert pruner._hold_lock() and pruner.holds_lock
    pid = pruner._lock_conn.raw.info.backend_pid
    dbaccess.query(pg_server[0], "SELECT pg_terminate_backend(?)", (pid,))  # the server (or network) drops it
    wait_until(lambda: not dbaccess.query(pg_server[0], "SELECT 1 FROM pg_stat_activity WHERE pid = ?", (pid,)),
               message="the session gone")
    other_host = lock_holder(db_target)  # the lock went with the session: another host takes it
    try:
        assert not pruner._hold_lock() and not pruner.holds_lock  # the next interval: no lock, no prune
    finally:
        other_host.close()
    assert pruner._hold_lock() and pruner._lock_conn.raw.info.backend_pid != pid
    pruner.stop()
    assert not pruner.holds_lock


def test_the_periodic_prune_starts_on_postgresql(db_target, db_path):
    from app import create_app

    on = create_app({"DATABASE_URL": db_target, "DATABASE_PATH": db_path, **SECRETS, "RETENTION_DAYS": "0.5",
                     "RETENTION_INTERVAL_SECONDS": "60"})
    try:
        running = retention.start(on)
        assert running is not None and running.db_path == db_target and running.postgres
        wait_until(lambda: running.holds_lock, message="the advisory lock")
    finally:
        retention.stop()
    assert not running.thread.is_alive() and not running.holds_lock


def test_a_connection_lost_while_taking_the_lock_skips_an_interval_and_does_not_end_the_thread(
        app, db_target, monkeypatch):
    """The lock's connection drops between its opening and the lock query: that interval has no lock (and no
    prune), and the pruner takes the lock at the next one; the exception never ends the pruner's thread."""
    real_connect = pg.connect

    def connect_then_drop(url):
        conn = real_connect(url)
        conn.raw.close()  # the network drops it before the lock query
        return conn

    pruner = PeriodicPrune(db_target, tables(app), 7 * DAY, interval_seconds=60)
    monkeypatch.setattr(pg, "connect", connect_then_drop)
    assert not pruner._hold_lock() and not pruner.holds_lock
    monkeypatch.setattr(pg, "connect", real_connect)
    assert pruner._hold_lock() and pruner.holds_lock
    pruner.stop()
