"""PostgreSQL connections that speak the few sqlite3 idioms task_store uses (DATABASE_URL=postgresql://...).

Imported only when PostgreSQL is selected (psycopg is never loaded for SQLite, and never by the processor
or the worker). `PgConn` wraps a psycopg 3 connection in autocommit mode, so a transaction exists only
inside `transaction()` (an implicit one would hold locks and pin vacuum on a kept connection). Its
`execute()` takes task_store's SQLite-flavoured SQL: `?` and `:name` placeholders become psycopg's, and
SQLite's unary `+"column"` index hints are dropped (PostgreSQL has no unary plus on text, and its planner
needs no hint). Rows answer both `row[0]` and `row["name"]`, like sqlite3.Row; JSONB reads back as text,
so the shared code decodes JSON the same way on both backends.

One pool per process and URL, opened on first use (after gunicorn forks: a pool made in the master would
share sockets with its children). Every connection gets a connect timeout, `lock_timeout` (a transition
waits this long for a row another holds, then fails instead of hanging a thread) and
`idle_in_transaction_session_timeout` (a transaction left open cannot pin vacuum for long); behind a
transaction pooler (DATABASE_DIRECT_URL, see use_direct) the pooled ones do not: those belong on the role.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import pq
from psycopg.types.string import TextLoader
from psycopg_pool import ConnectionPool

CONNECT_TIMEOUT_SECONDS = 10
LOCK_TIMEOUT = "5s"
IDLE_IN_TRANSACTION_TIMEOUT = "10s"
POOL_TIMEOUT_SECONDS = 30.0  # waiting for a free connection of the pool
POOL_MAX = int(os.environ.get("DATABASE_POOL_MAX", "10"))  # per process; a long poll gives its one back while it waits


class Row(tuple):
    """A result row: by position and by column name, and `dict(row)` gives {name: value}."""

    def __new__(cls, values, names: dict[str, int]):
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key):
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)

    def keys(self):
        return list(self._names)


def _row_factory(cursor):
    names = {column.name: i for i, column in enumerate(cursor.description or ())}
    return lambda values: Row(values, names)


_STRINGS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")
_HINT = re.compile(r"(?<=[\s(])\+(?=\")")
_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """SQLite placeholders and hints to psycopg's (string literals and quoted names are left alone)."""
    out, at = [], 0
    for match in _STRINGS.finditer(sql):
        out.append(_translate_code(sql[at:match.start()]))
        out.append(match.group().replace("%", "%%"))
        at = match.end()
    out.append(_translate_code(sql[at:]))
    return _HINT.sub("", "".join(out))


def _translate_code(code: str) -> str:
    code = code.replace("%", "%%").replace("?", "%s")
    return _NAMED.sub(r"%(\1)s", code)


class PgConn:
    """A psycopg connection with sqlite3's `execute()` shape (see the module docstring)."""

    dialect = "postgresql"

    def __init__(self, raw: psycopg.Connection, url: str | None = None, from_pool: ConnectionPool | None = None):
        self.raw = raw
        self.url = url  # for the wake-up's listener and notifier (web/pg_wakeup.py)
        self.pool = from_pool  # the pool `raw` came from: given back while a long poll sleeps (released)
        self.ready: set[str] = set()  # integrations whose work this transaction makes claimable

    @property
    def direct_url(self) -> str | None:
        """Where the wake-up's listener for this connection's database connects (use_direct)."""
        return direct_url(self.url) if self.url else None

    def execute(self, sql: str, params: Any = ()) -> psycopg.Cursor:
        return self.raw.execute(translate(sql), params or ())  # () still turns %% back into %

    def execute_pg(self, sql: str, params: Any = None) -> psycopg.Cursor:
        """PostgreSQL's own SQL, as is (%s placeholders)."""
        return self.raw.execute(sql, params)

    def executemany(self, sql: str, params_seq, returning: bool = False) -> psycopg.Cursor:
        """One statement for each params, pipelined (one round trip); `returning`: each one's rows are kept,
        a result set each (cursor.nextset())."""
        cursor = self.raw.cursor()
        cursor.executemany(translate(sql), params_seq, returning=returning)
        return cursor

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != pq.TransactionStatus.IDLE

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN (READ COMMITTED) ... COMMIT, or ROLLBACK on an exception.

        Once the outermost transaction has committed, the integrations it marked ready (`mark_ready`)
        are handed to the notifier; a rolled-back one wakes nobody."""
        outermost = not self.in_transaction
        try:
            with self.raw.transaction():
                yield
        except BaseException:
            if outermost:
                self.ready.clear()
            raise
        if outermost and self.ready:
            ready, self.ready = self.ready, set()
            if self.url is not None:
                from web import pg_wakeup

                pg_wakeup.notify_ready(self.url, ready)

    def mark_ready(self, integration: str) -> None:
        """This transaction makes work of `integration` claimable: wake its long polls after the commit."""
        self.ready.add(integration)

    @contextmanager
    def released(self) -> Iterator[None]:
        """Give the pooled connection back for the block (a long poll's sleep); take one again after.
        Kept if it is in a transaction or not from a pool. If no connection can be had again the error
        propagates and `raw` stays None (the request's teardown then has nothing to give back)."""
        if self.pool is None or self.raw is None or self.in_transaction:
            yield
            return
        self.pool.putconn(self.raw)
        self.raw = None
        try:
            yield
        finally:
            self.raw = self.pool.getconn()

    def rollback(self) -> None:
        self.raw.rollback()

    def close(self) -> None:
        self.raw.close()


def configure(conn: psycopg.Connection, session: bool = True) -> None:
    """Every new connection: JSONB read as text, rows by name and position, and (`session`: not through a
    transaction pooler, where they would land on whichever server connection ran them) the session's timeouts."""
    conn.adapters.register_loader("jsonb", TextLoader)
    conn.adapters.register_loader("json", TextLoader)
    conn.row_factory = _row_factory
    if session:
        for name, value in session_timeouts().items():
            conn.execute(f"SET {name} = '{value}'")


def session_timeouts() -> dict[str, str]:
    """The settings every direct connection makes (read at each call: a test shortens LOCK_TIMEOUT)."""
    return {"lock_timeout": LOCK_TIMEOUT, "idle_in_transaction_session_timeout": IDLE_IN_TRANSACTION_TIMEOUT}


def connection_options(url: str) -> dict[str, Any]:
    """psycopg.connect's options for `url`. Through a transaction pooler (`url` has a direct URL), no prepared
    statements: psycopg prepares a statement it has run five times on a connection, under a name that
    another client sharing the server connection may already have used (PgBouncer's max_prepared_statements,
    from 1.21, is not needed then)."""
    options: dict[str, Any] = {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_SECONDS}
    if pooled(url):
        options["prepare_threshold"] = None
    return options


def connect(url: str, direct: bool = False) -> PgConn:
    """One connection of its own (the CLI, migrations, tests): autocommit, configured. `direct`: to `url`'s
    direct URL (DATABASE_DIRECT_URL), for work that keeps state in its session (the prune's advisory lock)."""
    if direct:
        raw = psycopg.connect(direct_url(url), autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS)
        configure(raw)
    else:
        raw = psycopg.connect(url, **connection_options(url))
        configure(raw, session=not pooled(url))
    return PgConn(raw, url)


_direct: dict[str, str] = {}


def use_direct(url: str, direct: str | None) -> None:
    """`url` is a transaction pooler in front of the database `direct` reaches (DATABASE_DIRECT_URL; None: it
    is not). Work that needs a session of its own (LISTEN, a session advisory lock) connects to `direct`;
    connections to `url` prepare no statements and set no session settings (set them on the role).

    Behind a transaction pooler (PgBouncer in transaction mode) each transaction of a client may run on
    another server connection: a LISTEN would not hear its notifications, a session lock taken by one
    client could be taken again by another that lands on the same server connection, and a session's
    prepared statements and settings are another client's."""
    if direct and direct != url:  # the same URL names no pooler: nothing changes
        _direct[url] = direct
    else:
        _direct.pop(url, None)


def pooled(url: str) -> bool:
    """Whether `url` is a transaction pooler in front of its database (it has a direct URL: use_direct)."""
    return url in _direct


def direct_url(url: str) -> str:
    """Where session-bound work for the database at `url` connects (see use_direct)."""
    return _direct.get(url, url)


_pools: dict[tuple[int, str], ConnectionPool] = {}
_pools_lock = threading.Lock()


def pool(url: str) -> ConnectionPool:
    """This process's pool for `url`, opened on first use (so after a fork, never inherited)."""
    key = (os.getpid(), url)
    found = _pools.get(key)
    if found is not None:
        return found
    with _pools_lock:
        if key not in _pools:
            session = not pooled(url)  # through a transaction pooler a session's settings are another client's
            made = ConnectionPool(url, min_size=1, max_size=POOL_MAX, open=False, timeout=POOL_TIMEOUT_SECONDS,
                                  kwargs=connection_options(url),
                                  configure=lambda conn: configure(conn, session=session),
                                  check=ConnectionPool.check_connection,
                                  name=f"tasks-{os.getpid()}")
            made.open(wait=True, timeout=POOL_TIMEOUT_SECONDS)
            _pools[key] = made
        return _pools[key]


def close_pools(url: str | None = None) -> None:
    """Close this process's pools (of `url` only, if given), and its wake-up's listener and notifier:
    tests, and a process that ends."""
    import sys

    if "web.pg_wakeup" in sys.modules:
        sys.modules["web.pg_wakeup"].close(url)
    with _pools_lock:
        for key in [k for k in _pools if url is None or k[1] == url]:
            if key[0] == os.getpid():
                _pools.pop(key).close(timeout=5)
            else:
                _pools.pop(key)  # inherited from a parent: its sockets are the parent's, never ours to close
