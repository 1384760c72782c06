"""Sleep until another connection may have committed to the database: the long polls' wait.

A long poll must wake as soon as a commit may have brought work. Checking
`PRAGMA data_version` every millisecond does that, but costs ~2% of a core per
waiting request, idle or not (7.6% of a core for two idle processors). In WAL
mode every commit writes the `-wal` file, so on Linux an inotify watch on that
file lets a waiter sleep in the kernel until a write; `PRAGMA data_version`
still decides whether it was another connection's commit (looked at for a few
milliseconds after the write, as a commit is published just after it is written). A check every 50 ms
covers anything the watch could miss (the file replaced, say); where inotify is
not available the wait falls back to the 1 ms poll. On PostgreSQL the wait is `ListenWaiter`: a
notification for the poll's integration, or a re-check every second (web/pg_wakeup.py). On either store a
waiting poll looks again every second without a commit (RELOOK_SECONDS): a retry's backoff, a stuck claim's
timeout or a block's probe comes due by the clock, and no commit announces it.

`long_poll` is the one wait of the internal API's long polls (fetch and claim).
Two more things bound what a wait may cost the web process:

* A **budget** of waiting polls per process (`limit_waiting`, set by gunicorn.conf.py to
  half a worker's threads). Each waiting poll holds a gunicorn thread; past the budget
  a poll is not held but answered at once with what its first look found and a hint,
  `retryAfterMs`, of when to ask again (the processor then waits on its own side). No
  integration takes more than its share of the budget.
* A poll whose **client went away** (its socket hung up) stops waiting at once instead
  of holding its thread until `waitMs` runs out.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import random
import select
import socket
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, NamedTuple, TypeVar

IN_MODIFY = 0x00000002
POLL_STEP_SECONDS = 0.001  # without inotify: how often to look (a ~5 µs pragma)
SAFETY_CHECK_SECONDS = 0.05  # with inotify: look anyway this often
SETTLE_SECONDS = 0.005  # after a WAL write: how long to watch for its commit to be published
SETTLE_STEP_SECONDS = 0.0001
RELOOK_SECONDS = 1.0  # a waiting poll looks again this often without a commit: work that comes due by the clock
LISTEN_CLIENT_CHECK_SECONDS = 0.1  # PostgreSQL: a waiting poll looks at its client's socket this often
CLIENT_CHECK_SECONDS = 0.05  # without hang-up events: look at a waiting poll's client socket this often
POLLRDHUP = getattr(select, "POLLRDHUP", 0)  # Linux: the peer closed its side of a socket
HANG_UP = POLLRDHUP | select.POLLHUP | select.POLLERR

T = TypeVar("T")
_local = threading.local()
STOPPING = threading.Event()  # this process is shutting down: waiting polls answer now (stop_waiting)
_libc: ctypes.CDLL | None = None


def _load_libc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name, use_errno=True) if name else None
        except OSError:
            libc = None
        _libc = libc if libc is not None and hasattr(libc, "inotify_init1") else False
    return _libc or None


class WalWatch:
    """An inotify watch on one database's WAL file, kept per thread across requests."""

    def __init__(self, db_path: str):
        self.wal_path = db_path + "-wal"
        self.fd: int | None = None
        self.inode: int | None = None
        self.poller = select.poll()
        self.wakeups = 0  # times the thread woke up to look (for tests and curiosity)
        self.hung_up = False  # the client watched (watch_client) hung up

    def ensure(self) -> bool:
        """(Re)attach the watch if the WAL file is missing from it; True if watching."""
        try:
            inode = os.stat(self.wal_path).st_ino
        except OSError:
            inode = None
        if self.fd is not None and inode == self.inode:
            return True
        self.close()
        libc = _load_libc()
        if libc is None or inode is None:
            return False
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            return False
        if libc.inotify_add_watch(fd, os.fsencode(self.wal_path), IN_MODIFY) < 0:
            os.close(fd)
            return False
        self.fd, self.inode = fd, inode
        self.poller.register(fd, select.POLLIN)
        return True

    def drain(self) -> None:
        """Forget writes seen so far (their commits are about to be looked at)."""
        if self.fd is None:
            return
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass

    def sleep(self, timeout: float) -> bool:
        """Until the WAL file is written (True), or `timeout` passes (capped by the safety check).

        A hang-up of the client watched meanwhile (`watch_client`) also ends the sleep, and sets
        `hung_up`.
        """
        self.wakeups += 1
        if self.fd is None:
            time.sleep(min(timeout, POLL_STEP_SECONDS))
            return False
        events = self.poller.poll(max(0.0, min(timeout, SAFETY_CHECK_SECONDS)) * 1000)
        if not events:
            self.ensure()  # a quiet spell: make sure the watch still sees the live file
            return False
        written = False
        for fd, _ in events:
            if fd == self.fd:
                written = True
            else:
                self.hung_up = True
        if written:
            self.drain()
        return written

    def watch_client(self, client: socket.socket) -> bool:
        """Make `sleep` end when this socket's peer hangs up, until `unwatch_client`; False if it cannot
        (no inotify, or no POLLRDHUP: not Linux)."""
        self.hung_up = False
        if self.fd is None or not POLLRDHUP:
            return False
        try:
            self.poller.register(client.fileno(), HANG_UP)
        except (OSError, ValueError):
            return False
        return True

    def unwatch_client(self, client: socket.socket) -> None:
        with contextlib.suppress(OSError, ValueError, KeyError):
            self.poller.unregister(client.fileno())

    def close(self) -> None:
        if self.fd is not None:
            self.poller.unregister(self.fd)
            os.close(self.fd)
        self.fd = self.inode = None


def thread_watch(db_path: str) -> WalWatch:
    """This thread's watch of `db_path`'s WAL file."""
    watch = getattr(_local, "watch", None)
    if watch is None or watch.wal_path != db_path + "-wal":
        if watch is not None:
            watch.close()
        watch = _local.watch = WalWatch(db_path)
    return watch


def client_gone(client: socket.socket) -> bool:
    """Whether the peer of this (blocking) request socket has closed it or reset it.

    Bytes waiting to be read (a pipelined request) mean it is still there.
    """
    try:
        return client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError, ValueError):  # ValueError: TLS sockets take no flags
        return False
    except OSError:
        return True  # reset, or not connected any more


class CommitWaiter:
    """Tells a long poll when another connection has committed since it last looked.

    Given the request's `client` socket, the wait also ends (False, and `client_gone`
    is set) as soon as the client hangs up: a poll nobody waits for must not hold its thread.
    """

    def __init__(self, conn: sqlite3.Connection, db_path: str, client: socket.socket | None = None):
        self.conn = conn
        self.client = client
        self.client_gone = False
        self.watch = thread_watch(db_path)
        self.watch.ensure()
        self.watch.drain()  # before reading the version: a commit after this wakes us
        self.version = self.conn.execute("PRAGMA data_version").fetchone()[0]

    def wait(self, deadline: float) -> bool:
        """Sleep until another connection commits or RELOOK_SECONDS pass (True: look again), or until
        `deadline` (monotonic) passes, the client goes away or the process is stopping (False)."""
        # Linux: the client's hang-up wakes the sleep at once. Elsewhere (or if the WAL watch is
        # lost meanwhile) its socket is looked at every 50 ms.
        self.watch.hung_up = False
        watched = self.client is not None and self.watch.watch_client(self.client)
        try:
            return self._wait(deadline, watched)
        finally:
            if watched:
                self.watch.unwatch_client(self.client)

    def _wait(self, deadline: float, watched: bool) -> bool:
        look_at_client = time.monotonic() + CLIENT_CHECK_SECONDS
        relook = time.monotonic() + RELOOK_SECONDS
        while True:
            now = time.monotonic()
            if now >= deadline or STOPPING.is_set():
                return False
            if now >= relook:
                return True  # no commit, but a retry, a stuck claim or a block's probe may have come due
            written = self.watch.sleep(min(deadline, relook) - now)
            if self.watch.hung_up:
                # The client shut its side, or reset: the wait ends as it is, and the answer goes
                # out to nobody (or to a client that only stopped sending).
                self.client_gone = True
                return False
            if self.client is not None and (not watched or self.watch.fd is None):
                if time.monotonic() >= look_at_client:
                    if client_gone(self.client):
                        self.client_gone = True
                        return False
                    look_at_client = time.monotonic() + CLIENT_CHECK_SECONDS
            if self._committed():
                return True
            if written:
                # A commit writes its WAL frames first and publishes them in the shared
                # index (not watched: it is memory-mapped) a moment later: look again shortly.
                settled = min(deadline, time.monotonic() + SETTLE_SECONDS)
                while time.monotonic() < settled:
                    time.sleep(SETTLE_STEP_SECONDS)
                    if self._committed():
                        return True

    def _committed(self) -> bool:
        """Whether another connection committed since the last look (`PRAGMA data_version`: no disk read)."""
        latest = self.conn.execute("PRAGMA data_version").fetchone()[0]
        changed, self.version = latest != self.version, latest
        return changed


class ListenWaiter:
    """commit_watch.long_poll's wait on PostgreSQL: until a notification for the poll's integration, the
    next fallback re-check, the deadline, or the client hanging up. The pooled connection is given back
    while it sleeps (PgConn.released)."""

    def __init__(self, conn: Any, key: str, client: socket.socket | None = None):
        from web import pg_wakeup  # psycopg is loaded only for PostgreSQL

        self.pg_wakeup = pg_wakeup
        self.conn = conn
        self.key = key
        self.client = client
        self.client_gone = False
        self.listener = self.pg_wakeup.listener(conn.url, conn.direct_url)
        self.seen = self.listener.mark(key)  # before the first look: a notify after it wakes the wait
        self.wakeups = 0

    def wait(self, deadline: float) -> bool:
        """True when it is time to look again (notified, or the fallback tick); False at `deadline` or once
        the client is gone."""
        with self.conn.released():
            return self._wait(deadline)

    def _wait(self, deadline: float) -> bool:
        tick = min(deadline, time.monotonic() + self.pg_wakeup.FALLBACK_SECONDS)
        while True:
            now = time.monotonic()
            if now >= deadline or STOPPING.is_set():
                return False
            until = min(tick, now + LISTEN_CLIENT_CHECK_SECONDS)
            step = until - now
            woke = self.listener.wait(self.key, self.seen, max(0.0, step))
            # The client first, even when notified: a look claims work, and a claim for a client that
            # hung up meanwhile (a processor killed) would sit `queued` until the stuck timeout.
            if self.client is not None and client_gone(self.client):
                self.client_gone = True
                return False
            if woke:
                self.seen = self.listener.mark(self.key)  # a notify from now on wakes the next wait
                self.wakeups += 1
                return True
            if time.monotonic() >= tick:
                self.wakeups += 1
                return time.monotonic() < deadline


class WaitBudget:
    """How many long polls may wait at once in this process, and how many of one integration.

    A waiting poll holds one of gunicorn's threads (8 a worker by default). Without a
    bound, enough processors hold every thread and a user's request queues behind
    their 30 s waits. `slots` None means no bound (the Flask dev server, tests).
    An integration may take at most its share of the slots (rounded up), so one
    integration's processors never crowd out the other's.
    """

    def __init__(self, slots: int | None = None):
        self.slots = slots
        self._lock = threading.Lock()
        self._waiting: Counter[str] = Counter()

    def take(self, key: str, keys: int) -> bool:
        """Hold a slot for a poll of `key` (one of `keys` integrations); False if none is free."""
        with self._lock:
            if self.slots is not None:
                share = -(-self.slots // max(1, keys))
                if self._waiting.total() >= self.slots or self._waiting[key] >= share:
                    return False
            self._waiting[key] += 1
            return True

    def give_back(self, key: str) -> None:
        with self._lock:
            self._waiting[key] -= 1


BUDGET = WaitBudget()


def limit_waiting(slots: int | None) -> None:
    """At most `slots` long polls of this process wait at once (gunicorn.conf.py: per worker); None: no limit."""
    BUDGET.slots = slots


def stop_waiting() -> None:
    """The process is shutting down (gunicorn.conf.py, on the worker's SIGTERM): every waiting poll answers
    now with what it has, and none waits any more, so a restart is not held up by polls of up to 30 s and
    the processors come back at once to a process that stays."""
    STOPPING.set()


def retry_after_ms(wait_ms: int) -> int:
    """When a declined poll should ask again: what it was ready to wait, to half as long again, at random.

    Declined, a processor waits at least as long as a poll that found nothing would have (so it
    asks no more often than a waiting one), and the jitter spreads the processors' next polls
    apart. Declined polls are most of an idle web process's work (64 idle processors: 120 of
    their 128 polls), so this is what it costs. Work is not missed meanwhile: the polls holding
    the slots wake on every commit, and a processor that finds work polls again at once.
    """
    return max(1, round(wait_ms * random.uniform(1.0, 1.5)))


class Waited(NamedTuple):
    """What a long poll found, and how it ended."""

    found: Any
    retry_after_ms: int = 0  # declined (no slot to wait in): ask again after this long
    client_gone: bool = False  # its client hung up while it waited


def long_poll(conn: sqlite3.Connection, db_path: str, wait_ms: int, look: Callable[[], T], *,
              key: str = "", keys: int = 1, client: socket.socket | None = None,
              waiting: AbstractContextManager | None = None) -> Waited:
    """`look()`, and while it finds nothing, again after each commit by another connection, up to `wait_ms`.

    On PostgreSQL "each commit" is each notification for the poll's integration (`key`), or the fallback
    re-check (web/pg_wakeup.py).

    The wait needs a slot of the process's budget for `key` (one of `keys`); without
    one it is declined: the answer is the first look's, with `retry_after_ms`. It
    ends early if the `client` socket hangs up. `waiting` is entered for as long as
    the poll holds a slot (the waiting-polls gauge).
    """
    if getattr(conn, "dialect", None) == "postgresql":
        commits: CommitWaiter | ListenWaiter = ListenWaiter(conn, key, client)  # LISTEN/NOTIFY (web/pg_wakeup.py)
    else:
        commits = CommitWaiter(conn, db_path, client)  # before the first look: a commit after it wakes the wait
    found = look()
    if found or wait_ms <= 0 or STOPPING.is_set():
        return Waited(found)
    if not BUDGET.take(key, keys):
        return Waited(found, retry_after_ms=retry_after_ms(wait_ms))
    try:
        with waiting or contextlib.nullcontext():
            deadline = time.monotonic() + wait_ms / 1000
            while not found and commits.wait(deadline):
                found = look()
    finally:
        BUDGET.give_back(key)
    return Waited(found, client_gone=commits.client_gone)
