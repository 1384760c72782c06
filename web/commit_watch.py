"""Sleep until another connection may have committed to the database: the long polls' wait.

A long poll must wake as soon as a commit may have brought work. Checking
`PRAGMA data_version` every millisecond does that, but costs ~2% of a core per
waiting request, idle or not (7.6% of a core for two idle processors). In WAL
mode every commit writes the `-wal` file, so on Linux an inotify watch on that
file lets a waiter sleep in the kernel until a write; `PRAGMA data_version`
still decides whether it was another connection's commit (looked at for a few
milliseconds after the write, as a commit is published just after it is written). A check every 50 ms
covers anything the watch could miss (the file replaced, say); where inotify is
not available the wait falls back to the 1 ms poll.

`long_poll` is the one wait of the internal API's long polls (fetch and claim).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TypeVar

IN_MODIFY = 0x00000002
POLL_STEP_SECONDS = 0.001  # without inotify: how often to look (a ~5 µs pragma)
SAFETY_CHECK_SECONDS = 0.05  # with inotify: look anyway this often
SETTLE_SECONDS = 0.005  # after a WAL write: how long to watch for its commit to be published
SETTLE_STEP_SECONDS = 0.0001

T = TypeVar("T")
_local = threading.local()
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
        """Until the WAL file is written (True), or `timeout` passes (capped by the safety check)."""
        self.wakeups += 1
        if self.fd is None:
            time.sleep(min(timeout, POLL_STEP_SECONDS))
            return False
        if self.poller.poll(max(0.0, min(timeout, SAFETY_CHECK_SECONDS)) * 1000):
            self.drain()
            return True
        self.ensure()  # a quiet spell: make sure the watch still sees the live file
        return False

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


class CommitWaiter:
    """Tells a long poll when another connection has committed since it last looked."""

    def __init__(self, conn: sqlite3.Connection, db_path: str):
        self.conn = conn
        self.watch = thread_watch(db_path)
        self.watch.ensure()
        self.watch.drain()  # before reading the version: a commit after this wakes us
        self.version = self.conn.execute("PRAGMA data_version").fetchone()[0]

    def wait(self, deadline: float) -> bool:
        """Sleep until another connection commits (True) or `deadline` (monotonic) passes (False)."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            written = self.watch.sleep(remaining)
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


def long_poll(conn: sqlite3.Connection, db_path: str, wait_ms: int, look: Callable[[], T]) -> T:
    """`look()`, and while it finds nothing, again after each commit by another connection, up to `wait_ms`."""
    commits = CommitWaiter(conn, db_path)  # before the first look: a commit after it wakes the wait
    found = look()
    deadline = time.monotonic() + wait_ms / 1000
    while not found and commits.wait(deadline):
        found = look()
    return found
