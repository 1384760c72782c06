"""PostgreSQL: how a long poll learns that a commit made work claimable (LISTEN/NOTIFY; issue 16).

SQLite's long polls watch the WAL file (web/commit_watch.py). On PostgreSQL:

* **Who notifies.** Only commits that make work claimable mark their integration on the connection
  (task_store: a create, a retryable failure, an operator retry, a blocked hand-back, a cancel asked of an
  active task, an ended block, room freed under a cap). The mark is handed to this process's `Notifier`
  when the outermost transaction has committed (web.pg.PgConn.transaction); a rolled-back one hands nothing.
* **How.** Never inside the write transaction: a NOTIFY there takes a database-wide lock at commit (it
  halved the create commit rate in the design sketch's measurements). The notifier thread sends
  `pg_notify('task_ready', <integration>)` on its own autocommit connection, at most once per integration
  per COALESCE_SECONDS: the first at once, later ones folded into one trailing notify.
* **Who listens.** One `Listener` per process and database: a thread with its own autocommit connection
  (outside the pool, never in a transaction) LISTENing on `task_ready`. A notification bumps its
  integration's generation and wakes every waiting poll (a Condition). A reconnect bumps every
  integration: what was sent meanwhile may be lost.
* **The wait.** `commit_watch.ListenWaiter` marks the generation before the poll's first look (as CommitWaiter reads
  `data_version`), so a notify after the mark wakes it; it looks again anyway every FALLBACK_SECONDS: a lost
  notification, a notifier that died between commit and send, a retry that comes due, or a claim that
  becomes stuck, all by time alone. While it sleeps it gives its pooled connection back. (It lives in
  web/commit_watch.py, beside SQLite's CommitWaiter.)

Notifications reach every listener of the database, whatever schema it uses: a stray one costs a look.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from collections import Counter

import psycopg

CHANNEL = "task_ready"
COALESCE_SECONDS = 0.01  # at most one notify per integration this often (per process)
FALLBACK_SECONDS = 1.0  # a waiting poll looks again this often, notified or not
LISTEN_READY_SECONDS = 2.0  # the first long poll waits this long for the LISTEN to be in place
RECONNECT_SECONDS = 1.0
CONNECT_TIMEOUT_SECONDS = 10

log = logging.getLogger("web.pg_wakeup")


class Listener:
    """LISTEN task_ready on one connection of its own; generations per integration that waiters watch."""

    def __init__(self, url: str, direct: str | None = None):
        self.url = url
        self.direct = direct or url  # LISTEN needs a session: DATABASE_DIRECT_URL, not through a transaction pooler
        self.cond = threading.Condition()
        self.generation: Counter[str] = Counter()
        self.epoch = 0  # bumped on each (re)connect: every waiter looks again
        self.received = 0
        self.listening = threading.Event()
        self._stop = threading.Event()
        self._conn: psycopg.Connection | None = None
        self._thread = threading.Thread(target=self._run, name="pg-listener", daemon=True)
        self._thread.start()

    def mark(self, key: str) -> tuple[int, int]:
        with self.cond:
            return self.epoch, self.generation[key]

    def wait(self, key: str, seen: tuple[int, int], timeout: float) -> bool:
        """Until a notification for `key` after `seen` (True), or `timeout` (False)."""
        with self.cond:
            return self.cond.wait_for(lambda: (self.epoch, self.generation[key]) != seen, timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.direct, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS) as conn:
                    self._conn = conn
                    conn.execute(f"LISTEN {CHANNEL}")
                    with self.cond:
                        self.epoch += 1
                        self.cond.notify_all()
                    self.listening.set()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            if self._stop.is_set():  # close() woke us with a notify of its own
                                break
                            with self.cond:
                                self.received += 1
                                self.generation[note.payload] += 1
                                self.cond.notify_all()
            except Exception as exc:  # the server went away, a network error: listen again shortly
                self.listening.clear()
                if self._stop.is_set():
                    break
                log.warning("LISTEN connection lost (%s); long polls fall back to a %ss re-check until it is back",
                            exc, FALLBACK_SECONDS)
                self._stop.wait(RECONNECT_SECONDS)
            finally:
                self._conn = None

    def close(self) -> None:
        """Stop listening; a notify of our own wakes the thread from its wait at once (else up to 0.5 s)."""
        self._stop.set()
        if self.listening.is_set():
            try:
                with psycopg.connect(self.direct, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS) as conn:
                    conn.execute(f"SELECT pg_notify('{CHANNEL}', '')")
            except psycopg.Error:
                pass  # the server is gone: the thread's wait ends by its timeout
        self._thread.join(timeout=2)


class Notifier:
    """Sends pg_notify('task_ready', integration) after commits, coalesced per integration, from its own thread."""

    def __init__(self, url: str):
        self.url = url
        self.cond = threading.Condition()
        self.pending: set[str] = set()
        self.last_sent: dict[str, float] = {}
        self.sent = 0  # notifies sent (one per integration per send)
        self.noted = 0  # commits that asked for one
        self._closing = False
        self._conn: psycopg.Connection | None = None
        self._thread = threading.Thread(target=self._run, name="pg-notifier", daemon=True)
        self._thread.start()

    def note(self, keys) -> None:
        with self.cond:
            self.pending.update(keys)
            self.noted += 1
            self.cond.notify()

    def _run(self) -> None:
        while True:
            with self.cond:
                while True:
                    if self._closing and not self.pending:
                        return
                    now = time.monotonic()
                    due = [k for k in self.pending if now - self.last_sent.get(k, -1.0) >= COALESCE_SECONDS]
                    if due or (self._closing and self.pending):
                        due = due or list(self.pending)
                        break
                    if self.pending:
                        self.cond.wait(min(self.last_sent[k] + COALESCE_SECONDS for k in self.pending) - now)
                    else:
                        self.cond.wait()
                self.pending.difference_update(due)
                for key in due:
                    self.last_sent[key] = now
            self._send(due)

    def _send(self, keys: list[str]) -> None:
        try:
            if self._conn is None or self._conn.closed:
                # One statement, sent again and again: never prepared, so a transaction pooler can carry it.
                self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS,
                                             prepare_threshold=None)
            self._conn.execute("SELECT pg_notify(%s, k) FROM unnest(%s::text[]) AS k", (CHANNEL, keys))
            self.sent += len(keys)
        except Exception as exc:  # the waiters' fallback re-check finds the work within FALLBACK_SECONDS
            log.warning("pg_notify failed (%s); waiting long polls find the work at their next re-check", exc)
            with contextlib.suppress(Exception):
                if self._conn is not None:
                    self._conn.close()
            self._conn = None

    def close(self, timeout: float = 2.0) -> None:
        """Send what is pending, then stop."""
        with self.cond:
            self._closing = True
            self.cond.notify()
        self._thread.join(timeout=timeout)
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()


_listeners: dict[tuple[int, str, str], Listener] = {}  # (pid, url, the URL it connects to)
_notifiers: dict[tuple[int, str], Notifier] = {}
_lock = threading.Lock()


def listener(url: str, direct: str | None = None) -> Listener:
    """This process's listener for `url`, started on first use (after a fork: never the parent's); it
    connects to `direct` if given (web/pg.py's direct_url)."""
    key = (os.getpid(), url, direct or url)
    found = _listeners.get(key)
    if found is None:
        with _lock:
            found = _listeners.get(key)
            if found is None:
                found = _listeners[key] = Listener(url, direct)
        found.listening.wait(LISTEN_READY_SECONDS)  # a notify sent before the LISTEN would be missed
    return found


def notifier(url: str) -> Notifier:
    key = (os.getpid(), url)
    found = _notifiers.get(key)
    if found is None:
        with _lock:
            found = _notifiers.get(key)
            if found is None:
                found = _notifiers[key] = Notifier(url)
    return found


def notify_ready(url: str, integrations) -> None:
    """After a commit that made work of these integrations claimable: wake the long polls waiting for it."""
    notifier(url).note(integrations)


def close(url: str | None = None) -> None:
    """Stop this process's listeners and notifiers (of `url` only, if given); pending notifies are sent first."""
    with _lock:
        for registry in (_notifiers, _listeners):
            for key in [k for k in registry if url is None or k[1] == url]:
                found = registry.pop(key)
                if key[0] == os.getpid():
                    found.close()


atexit.register(close)  # a CLI command (an operator's retry) sends its notify before the process ends
