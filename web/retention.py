"""Retention: finished tasks older than RETENTION_DAYS deleted by the web process, in the background.

Off unless RETENTION_DAYS is set. Under gunicorn every worker starts a daemon thread
(gunicorn.conf.py's post_worker_init), but only the one holding the prune lock prunes; the
others try for the lock every interval, so when that worker exits another takes over. On
SQLite the lock is an exclusive flock on `<database>.prune.lock` (the kernel drops it with the
process). On PostgreSQL it is a session advisory lock (`pg_try_advisory_lock`, keyed by the
schema) held on a connection of its own (to DATABASE_DIRECT_URL if set: a session lock needs a session, which a
transaction pooler does not keep), so one worker of all the hosts prunes at a time; the
server drops it when that connection ends, and the holder checks its connection every interval. Each run is
task_store.prune_finished: small write transactions, live tasks never touched. The thread
stops between two batches at the worker's exit (worker_exit). `flask --app app tasks prune`
is the same prune, run once by an operator.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Callable

import logs
from web import db, task_store
from web.metrics import PRUNED
from web.task_store import PruneReport, TaskTable

log = logging.getLogger("web.retention")
PRUNE_LOCK = 7261847204  # PostgreSQL: advisory lock (seed of hashtextextended(current_schema())): one pruner
DAY_SECONDS = 86_400
DEFAULT_INTERVAL_SECONDS = 300.0


def media_deleter(app) -> Callable[[list[str]], None] | None:
    """What runs after each pruned batch commits, with its task ids: the media store's deletes (local disk or
    S3). A store that fails is logged and the prune goes on: the rows are gone already, the files stay as
    orphans that nothing refers to."""
    store = app.extensions.get("media")
    if store is None:
        return None

    def delete(task_ids: list[str]) -> None:
        from integrations.shared.media import StorageFailed

        for task_id in task_ids:
            try:
                store.delete_task(task_id)
            except StorageFailed as exc:
                logs.event(log, "media of a pruned task not deleted", logging.WARNING, task=task_id, error=str(exc))

    return delete


class PeriodicPrune:
    """A daemon thread that prunes every `interval_seconds` while this process holds the prune lock."""

    def __init__(self, db_path: str, tables: list[TaskTable], older_than_seconds: float,  # path or URL
                 interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
                 on_pruned: Callable[[list[str]], None] | None = None):
        self.db_path = db_path
        self.tables = tables
        self.older_than_seconds = older_than_seconds
        self.interval_seconds = interval_seconds
        self.on_pruned = on_pruned
        self.lock_path = f"{db_path}.prune.lock"
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="periodic-prune", daemon=True)
        self._lock_fd: int | None = None
        self.postgres = db.is_postgres(db_path)
        self._lock_conn = None  # PostgreSQL: the connection holding the advisory lock

    def start(self) -> PeriodicPrune:
        self.thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to stop (it ends between two batches), wait for it, let the lock go."""
        self.stopping.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout)
        self._release()

    def _run(self) -> None:
        while not self.stopping.is_set():
            if self._hold_lock():
                try:
                    self.run_once()
                except Exception:  # the next interval tries again; the thread must not die of one error
                    log.exception("periodic prune failed")
            self.stopping.wait(self.interval_seconds)

    def run_once(self) -> PruneReport:
        if self.postgres:
            from web import pg

            conn = pg.connect(self.db_path)
        else:
            conn = db.connect(self.db_path)
        try:
            report = task_store.prune_finished(conn, self.tables, self.older_than_seconds,
                                               on_pruned=self.on_pruned, stop=self.stopping)
        finally:
            conn.close()
        if report.tasks:
            PRUNED.inc(report.tasks)
            logs.event(log, "pruned finished tasks", tasks=report.tasks, events=report.events, keys=report.keys,
                       batches=report.batches, seconds=round(report.seconds, 3),
                       longest_lock_ms=round(report.longest_lock_ms, 2),
                       older_than_days=round(self.older_than_seconds / DAY_SECONDS, 6), pid=os.getpid())
        return report

    @property
    def holds_lock(self) -> bool:
        return self._lock_fd is not None or self._lock_conn is not None

    def _hold_lock(self) -> bool:
        """Whether this process holds the prune lock (taken now if it is free)."""
        if self.postgres:
            return self._hold_pg_lock()
        if self._lock_fd is not None:
            return True
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        logs.event(log, "this process runs the periodic prune", older_than_days=self.older_than_seconds / DAY_SECONDS,
                   interval_seconds=self.interval_seconds, pid=os.getpid())
        return True

    def _hold_pg_lock(self) -> bool:
        """PostgreSQL: hold the advisory lock on a connection of our own. A held lock is checked (its
        connection may have died, and the lock with it: then it is tried for again, like a free one)."""
        from web import pg

        if self._lock_conn is not None:
            try:
                self._lock_conn.execute_pg("SELECT 1").fetchall()
                return True
            except Exception as exc:
                logs.event(log, "periodic prune lost its lock's connection", logging.WARNING, error=str(exc),
                           pid=os.getpid())
                self._release()
        try:
            conn = pg.connect(self.db_path, direct=True)  # a session lock needs a session: not via a pooler
        except Exception as exc:
            logs.event(log, "periodic prune cannot reach the database", logging.WARNING, error=str(exc))
            return False
        try:
            got = conn.execute_pg("SELECT pg_try_advisory_lock(hashtextextended(current_schema(), %s))",
                                  (PRUNE_LOCK,)).fetchone()[0]
        except Exception as exc:  # a dropped connection: try again next interval; the thread must live on
            conn.close()
            logs.event(log, "periodic prune could not take its lock", logging.WARNING, error=str(exc))
            return False
        if not got:
            conn.close()
            return False
        self._lock_conn = conn
        logs.event(log, "this process runs the periodic prune", older_than_days=self.older_than_seconds / DAY_SECONDS,
                   interval_seconds=self.interval_seconds, pid=os.getpid(), lock="postgresql advisory")
        return True

    def _release(self) -> None:
        if self._lock_conn is not None:
            with contextlib.suppress(Exception):
                self._lock_conn.close()  # the session's advisory lock goes with it
            self._lock_conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None


_running: PeriodicPrune | None = None


def start(app) -> PeriodicPrune | None:
    """Start this process's periodic prune if RETENTION_DAYS is set (once per process); None if it is off."""
    global _running
    settings = getattr(app, "extensions", {}).get("settings")
    days = settings.get("components.retention.days") if settings is not None else None
    if days is None or _running is not None:
        return _running
    interval = float(settings.get("components.retention.intervalSeconds", DEFAULT_INTERVAL_SECONDS))
    _running = PeriodicPrune(db.target(app.config), list(app.extensions["task_tables"].values()),
                             float(days) * DAY_SECONDS, interval, media_deleter(app)).start()
    return _running


def stop() -> None:
    """Stop this process's periodic prune, if one runs (gunicorn's worker_exit)."""
    global _running
    if _running is not None:
        _running.stop()
        _running = None
