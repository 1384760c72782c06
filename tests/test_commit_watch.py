"""The long polls' wait: wake on another connection's commit, sleep (not spin) otherwise.

SQLite only, by nature: it watches SQLite's WAL file (PostgreSQL's wake-up is LISTEN/NOTIFY:
tests/test_pg_wakeup.py).
"""

import threading
import time

from web import commit_watch, db
from web.commit_watch import SAFETY_CHECK_SECONDS, CommitWaiter, thread_watch

INSERT = ("INSERT INTO task_events (namespace, task_id, status, attempt, created_at) "
          "VALUES ('n', 't', 'pending', 0, 0)")


def open_db(tmp_path):
    path = str(tmp_path / "app.db")
    db.init_db(path)
    return path, db.connect(path)


def commit_from_another_connection(path):
    conn = db.connect(path)
    conn.execute(INSERT)
    conn.close()


def test_wakes_for_another_connections_commit(tmp_path):
    path, waiting = open_db(tmp_path)
    waiter = CommitWaiter(waiting, path)
    threading.Timer(0.2, commit_from_another_connection, (path,)).start()
    began = time.monotonic()
    assert waiter.wait(began + 5) is True
    assert 0.15 < time.monotonic() - began < 2  # woke for the commit, not at the deadline


def test_own_commits_do_not_count_and_the_deadline_ends_the_wait(tmp_path):
    path, waiting = open_db(tmp_path)
    waiter = CommitWaiter(waiting, path)
    waiting.execute(INSERT)
    began = time.monotonic()
    assert waiter.wait(began + 0.3) is False
    assert time.monotonic() - began >= 0.3


def test_an_idle_wait_sleeps_in_the_kernel_instead_of_polling(tmp_path):
    """Polling every millisecond woke ~500 times in half a second; the WAL watch wakes ~10 times."""
    path, waiting = open_db(tmp_path)
    waiter = CommitWaiter(waiting, path)
    assert waiter.watch.fd is not None  # Linux: inotify on the -wal file
    before = thread_watch(path).wakeups
    waiter.wait(time.monotonic() + 0.5)
    assert thread_watch(path).wakeups - before <= 0.5 / SAFETY_CHECK_SECONDS + 2


def test_without_inotify_it_polls_and_still_wakes_for_a_commit(tmp_path, monkeypatch):
    """A machine without inotify (not Linux, or out of instances) cannot be had here: pretend."""

    monkeypatch.setattr(commit_watch, "_libc", False)
    monkeypatch.setattr(commit_watch, "_local", threading.local())
    path, waiting = open_db(tmp_path)
    waiter = CommitWaiter(waiting, path)
    assert waiter.watch.fd is None
    threading.Timer(0.1, commit_from_another_connection, (path,)).start()
    began = time.monotonic()
    assert waiter.wait(began + 5) is True
    assert time.monotonic() - began < 2


def test_a_declined_poll_is_told_to_ask_again_no_sooner_than_a_waiting_one_would():
    """Declined polls are most of an idle web process's work (64 idle processors: 120 of their 128 polls), so a
    declined processor is told to come back after 100-150 % of the wait it asked for, never sooner than a poll
    that waited and found nothing, and at spread-out times."""
    hints = [commit_watch.retry_after_ms(20_000) for _ in range(2000)]
    assert 20_000 <= min(hints) and max(hints) <= 30_000
    assert max(hints) - min(hints) > 8_000  # spread over the range, not one moment
    assert commit_watch.retry_after_ms(1) >= 1
