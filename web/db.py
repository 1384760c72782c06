"""The web process's SQLite connections and the schema's numbered migrations.

Connections run in autocommit mode so that task_store can open its own
`BEGIN IMMEDIATE` transactions. A connection is kept for its thread's next
request: opening and closing one per request cost ~1 ms (closing the last
connection of a WAL database checkpoints it), half of a task creation.

Migrations are `migrations/sqlite/NNNN_name.sql`, or `.py` with `migrate(conn)`
where SQL cannot say it, numbered from 0001 without gaps. `PRAGMA user_version`
is the number of the last one applied; each runs in one transaction with that
bump, so a failed one leaves the database as it was. schema.sql is the same
schema written out whole, and a test holds the two equal. The app creates a new
database itself but refuses to start on one that is behind or ahead, so that no
code runs on a schema it was not written for: `flask --app app db upgrade` is the
one way forward (migrations/README.md).

A database from before versioning (user_version 0, tables present) is adopted at
version 1 once 0001's tables and columns are found in it; 0002 and 0003 look
before they change, since unversioned commits left any mix of old and new indexes.

PostgreSQL (DATABASE_URL=postgresql://...) keeps `migrations/postgresql/`, numbered
on its own, with the version in the one-row table schema_version; `db upgrade` picks
the folder and the version store by the target's scheme and applies the pending
migrations in one transaction under `pg_advisory_xact_lock`, so hosts starting at
once apply each migration once (PostgreSQL's DDL is transactional). Its connections
come from a per-process pool (web/pg.py, imported only then); a request holds one
from its first `get_db()` to its teardown.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click
from flask import current_app, g
from flask.cli import AppGroup

import logs
from settings import names_postgres

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "schema.sql"
MIGRATIONS = ROOT / "migrations" / "sqlite"
PG_MIGRATIONS = ROOT / "migrations" / "postgresql"
PG_UPGRADE_LOCK = 7261847200  # pg_advisory_xact_lock key: one schema upgrade at a time per database
UPGRADE = "flask --app app db upgrade"
BUSY_TIMEOUT_SECONDS = 30.0


def connect(path: str) -> sqlite3.Connection:
    """A connection that waits for the write lock instead of failing with 'database is locked'."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_SECONDS)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; safe with WAL
    return conn


class SchemaError(Exception):
    """The database's schema is not the one this release runs on, or cannot be brought to it."""


@dataclass(frozen=True)
class Migration:
    number: int
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    def apply(self, conn) -> None:
        """Run inside the caller's transaction, statement by statement: executescript would commit it.
        On PostgreSQL an .sql file is one multi-statement execute (its function bodies hold ';' too)."""
        if self.path.suffix == ".sql" and is_postgres_conn(conn):
            conn.execute_pg(self.path.read_text())
            return
        if self.path.suffix == ".py":
            spec = importlib.util.spec_from_file_location(f"migration_{self.number:04d}", self.path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            module.migrate(conn)
            return
        for statement in statements(self.path.read_text()):
            conn.execute(statement)


def load_migrations(folder: Path = MIGRATIONS) -> list[Migration]:
    """The migrations in `folder`, in order; a gap or a duplicate number is a packaging error."""
    found = []
    for path in folder.iterdir():
        match = re.fullmatch(r"(\d{4})_\w+\.(sql|py)", path.name)
        if match:
            found.append(Migration(int(match[1]), path))
    found.sort(key=lambda m: m.number)
    if [m.number for m in found] != list(range(1, len(found) + 1)):
        raise SchemaError(f"{folder}: migrations must be numbered 0001, 0002, ... without gaps: "
                          f"{[m.name for m in found]}")
    return found


def statements(script: str) -> Iterator[str]:
    """The statements of an SQL script (a trigger's body holds ';' too, hence complete_statement)."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if any(line.strip() and not line.strip().startswith("--") for line in pending[:-1].splitlines()):
                yield pending.strip()
            pending = ""


def is_postgres(target: str | None) -> bool:
    """Whether a database target (a DATABASE_URL, or an SQLite path) names PostgreSQL."""
    return names_postgres(target)


def is_postgres_conn(conn) -> bool:
    return getattr(conn, "dialect", None) == "postgresql"


def target(config) -> str:
    """The app's database: its PostgreSQL URL, or its SQLite file's path."""
    return config.get("DATABASE_URL") or config["DATABASE_PATH"]


def database_settings(url: str | None, path: str) -> tuple[str | None, str]:
    """(PostgreSQL URL or None, SQLite path) from DATABASE_URL and DATABASE_PATH: sqlite:///p means the path p."""
    if url and url.startswith("sqlite:///"):
        return None, url[len("sqlite:///"):]
    return (url or None), path


@contextmanager
def immediate(conn) -> Iterator[None]:
    """A write transaction that takes the write lock up front (no lock upgrade deadlocks).

    Some errors end SQLite's transaction themselves; then there is nothing left to roll back.
    On PostgreSQL it is a plain READ COMMITTED transaction: task_store locks the rows it
    decides on (FOR UPDATE, in id order) instead of the whole database.
    """
    if is_postgres_conn(conn):
        with conn.transaction():
            yield
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def _has_tables(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' LIMIT 1").fetchone() is not None


def _columns(conn: sqlite3.Connection) -> dict[str, set[str]]:
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {t: {r[1] for r in conn.execute(f"PRAGMA table_info({t})")} for t in tables}


def _check_unversioned(conn: sqlite3.Connection, first: Migration, path: str) -> None:
    """Refuse to adopt tables that are not (a later form of) migration 0001's."""
    expected = sqlite3.connect(":memory:", isolation_level=None)
    try:
        first.apply(expected)
        wanted = _columns(expected)
    finally:
        expected.close()
    found, missing = _columns(conn), []
    for table, columns in wanted.items():
        missing += [f"{table}.{c}" for c in sorted(columns - found[table])] if table in found else [table]
    if missing:
        raise SchemaError(f"{path} has tables but no schema version, and they are not this app's "
                          f"(missing {', '.join(missing)}); refusing to upgrade it")


def upgrade(path: str, folder: Path = MIGRATIONS, echo: Callable[[str], None] = lambda line: None) -> list[str]:
    """Bring the database at `path` to the newest migration; returns the names applied.

    Every step re-reads the version under the write lock, so processes upgrading
    the same file at once apply each migration once. A new database gets all
    migrations in one transaction: a process starting beside it never sees half of it.
    """
    if is_postgres(path):
        return _upgrade_pg(path, PG_MIGRATIONS if folder == MIGRATIONS else folder, echo)
    migrations = load_migrations(folder)
    target = len(migrations)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    applied: list[str] = []
    conn = connect(path)
    try:
        while True:
            with immediate(conn):
                version = _version(conn)
                if version > target:
                    raise SchemaError(_describe(path, version, target, True))
                if version == target:
                    break
                if version == 0 and _has_tables(conn):
                    _check_unversioned(conn, migrations[0], path)
                    conn.execute("PRAGMA user_version = 1")
                    steps = []
                else:
                    steps = migrations if version == 0 else migrations[version:version + 1]
                    for migration in steps:
                        _apply(conn, migration, path)
            if not steps:
                echo(f"{path}: tables from before versioning adopted as schema version 1")
            for migration in steps:
                applied.append(migration.name)
                echo(f"{path}: applied {migration.name} (schema version {migration.number} of {target})")
        conn.execute("PRAGMA journal_mode = WAL")  # outside a transaction; last, so a refusal changes nothing
    finally:
        conn.close()
    if not applied:
        echo(f"{path}: schema version {target} of {target}, nothing to apply")
    return applied


def _apply(conn: sqlite3.Connection, migration: Migration, path: str) -> None:
    try:
        migration.apply(conn)
    except Exception as exc:
        raise SchemaError(f"{path}: migration {migration.name} failed and was rolled back: {exc}") from exc
    conn.execute(f"PRAGMA user_version = {migration.number}")


def _upgrade_pg(url: str, folder: Path, echo: Callable[[str], None]) -> list[str]:
    """PostgreSQL: every pending migration and the version bump in one transaction, under the upgrade lock."""
    from web import pg

    migrations = load_migrations(folder)
    target, shown = len(migrations), _shown(url)
    applied: list[str] = []
    conn = pg.connect(url)
    try:
        with conn.transaction():
            conn.execute_pg("SELECT pg_advisory_xact_lock(%s)", (PG_UPGRADE_LOCK,))
            conn.execute_pg("CREATE TABLE IF NOT EXISTS schema_version (only_row BOOLEAN PRIMARY KEY DEFAULT true "
                            "CHECK (only_row), version INTEGER NOT NULL, updated_at DOUBLE PRECISION NOT NULL)")
            row = conn.execute_pg("SELECT version FROM schema_version").fetchone()
            version = row[0] if row else 0
            if version > target:
                raise SchemaError(_describe(shown, version, target, True))
            for migration in migrations[version:]:
                _apply_pg(conn, migration, shown)
                applied.append(migration.name)
            if applied:
                conn.execute_pg("INSERT INTO schema_version (version, updated_at) VALUES (%s, extract(epoch FROM "
                                "clock_timestamp())) ON CONFLICT (only_row) DO UPDATE SET version = excluded.version, "
                                "updated_at = excluded.updated_at", (target,))
    finally:
        conn.close()
    for name in applied:
        echo(f"{shown}: applied {name}")
    if not applied:
        echo(f"{shown}: schema version {target} of {target}, nothing to apply")
    return applied


def _apply_pg(conn, migration: Migration, shown: str) -> None:
    try:
        migration.apply(conn)
    except Exception as exc:
        raise SchemaError(f"{shown}: migration {migration.name} failed and was rolled back: {exc}") from exc


def _shown(url: str) -> str:
    """A database URL without its password, for messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def stored_version_pg(url: str) -> tuple[int, bool] | None:
    """(version, True) of a PostgreSQL database with a schema_version table; None without one."""
    from web import pg

    conn = pg.connect(url)
    try:
        if conn.execute_pg("SELECT to_regclass('schema_version')").fetchone()[0] is None:
            return None
        row = conn.execute_pg("SELECT version FROM schema_version").fetchone()
        return (row[0] if row else 0), True
    finally:
        conn.close()


def init_db(path: str) -> None:
    """Create the database at `path`, or bring it to the current version (tests and benchmarks call this)."""
    upgrade(path)


def stored_version(path: str) -> tuple[int, bool] | None:
    """(user_version, has tables) of an existing database, read without changing it; None if there is no file."""
    if path == ":memory:" or not Path(path).exists():
        return None
    try:
        conn = sqlite3.connect(path)
        try:
            return _version(conn), _has_tables(conn)
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise SchemaError(f"{path} cannot be read as an SQLite database: {exc}") from None


def _enable_wal(path: str) -> None:
    conn = connect(path)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()


def _describe(path: str, version: int, target: int, has_tables: bool) -> str:
    if version > target:
        return (f"{path} is at schema version {version}, ahead of this release's {target}; "
                "run the release that upgraded it (or a newer one)")
    before = " (made before versioning)" if version == 0 and has_tables else ""
    return f"{path} is at schema version {version} of {target}{before}; run: {UPGRADE}"


def check_at_start(path: str, exit_on_error: bool) -> None:
    """Create a new database at the current version; refuse one that is behind or ahead.

    With `exit_on_error` (a real start, not a test's app) a refusal is one line on
    stderr and exit status 2, as for a configuration error.
    """
    if _loading_for_db_command():
        return
    try:
        if is_postgres(path):
            target = len(load_migrations(PG_MIGRATIONS))
            found = stored_version_pg(path)
            if found is None:
                upgrade(path)
            elif found[0] != target:
                raise SchemaError(_describe(_shown(path), found[0], target, found[1]))
            _check_direct(path)
            return
        target = len(load_migrations())
        found = stored_version(path)
        if found is None or found == (0, False):
            upgrade(path)
        elif found[0] != target:
            raise SchemaError(_describe(path, found[0], target, found[1]))
        else:
            _enable_wal(path)  # as every start did before versioning: the long polls watch the WAL file
    except SchemaError as exc:
        if not exit_on_error:
            raise
        print(f"database error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


DIRECT_CHECK_SECONDS = 5.0  # how long a start waits to hear its own notification on DATABASE_DIRECT_URL
log = logging.getLogger("web.db")


def _check_direct(url: str) -> None:
    """DATABASE_DIRECT_URL, if set, must reach the database and schema DATABASE_URL does, and hear what is sent
    through it: a LISTEN elsewhere (another cluster, a standby, another pooler) hears none of our notifications,
    and a prune lock taken elsewhere excludes nobody. Proved by a notification of our own; on a refusal the
    direct URL is forgotten again."""
    from web import pg

    if not pg.pooled(url):
        return
    try:
        _prove_direct(url)
    except SchemaError:
        pg.use_direct(url, None)
        raise


def _prove_direct(url: str) -> None:
    import secrets

    import psycopg

    from web import pg

    where, channel = "SELECT current_database(), current_schema()", f"direct_check_{secrets.token_hex(6)}"
    try:
        listening = pg.connect(url, direct=True)
    except psycopg.Error as exc:  # refused, wrong password, unknown host
        raise SchemaError(f"DATABASE_DIRECT_URL: cannot connect ({str(exc).strip()})") from None
    try:
        direct = tuple(listening.execute_pg(where).fetchone())
        listening.execute_pg(f"LISTEN {channel}")
        try:
            conn = pg.connect(url)
            try:
                pooled = tuple(conn.execute_pg(where).fetchone())
                conn.execute_pg("SELECT pg_notify(%s, '')", (channel,))
                unset = {name: value for name, value in pg.session_timeouts().items()
                         if conn.execute_pg("SELECT current_setting(%s)", (name,)).fetchone()[0] == "0"}
            finally:
                conn.close()
        except psycopg.Error as exc:  # the pooler's side: say so, not the direct URL's
            raise SchemaError(f"DATABASE_URL: {str(exc).strip()}") from None
        if direct != pooled:
            raise SchemaError(f"DATABASE_DIRECT_URL reaches database {direct[0]!r}, schema {direct[1]!r}; "
                              f"DATABASE_URL reaches {pooled[0]!r}, schema {pooled[1]!r}: they must be the same")
        if not list(listening.raw.notifies(timeout=DIRECT_CHECK_SECONDS, stop_after=1)):
            raise SchemaError(f"DATABASE_DIRECT_URL did not hear, within {DIRECT_CHECK_SECONDS:g} s, a notification "
                              "sent through DATABASE_URL: it must reach the same server directly, not a standby "
                              "or a transaction pooler")
        if unset:  # a warning, not a refusal: the operator may mean it, but should know
            logs.event(log, "behind the pooler no connection sets its timeouts, and the role does not either: a "
                       "transition may wait on a row lock, and a transaction left open may pin vacuum, without "
                       "bound; set them on DATABASE_URL's role (README, PgBouncer)", logging.WARNING,
                       unset=",".join(unset), fix="; ".join(f"ALTER ROLE <role> SET {name} = '{value}'"
                                                            for name, value in unset.items()))
    except psycopg.Error as exc:  # e.g. LISTEN on a standby: "cannot execute LISTEN during recovery"
        raise SchemaError(f"DATABASE_DIRECT_URL: {str(exc).strip()}") from None
    finally:
        listening.close()


def _loading_for_db_command() -> bool:
    """Whether the flask CLI is loading the app to run `db ...` or `init-db`, which must open a database
    that is behind. Flask loads the app before it resolves the command and keeps no record of its name,
    so it is read from the command line with the CLI's own parser."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return False
    root = ctx.find_root()
    try:
        _, words, _ = root.command.make_parser(root).parse_args(list(sys.argv[1:]))
    except click.ClickException:
        return False
    return bool(words) and words[0] in ("db", "init-db")


_local = threading.local()


def busy(exc: BaseException) -> bool:
    """The database could not take the request in time, through no fault of the client: SQLite's write lock held
    past the busy timeout, a PostgreSQL lock past `lock_timeout`, no pooled connection free, or the server
    unreachable. Such a request changed nothing (its transaction rolled back) and may be sent again: a 503."""
    if isinstance(exc, sqlite3.OperationalError):
        return "locked" in str(exc) or "busy" in str(exc)
    psycopg, psycopg_pool = sys.modules.get("psycopg"), sys.modules.get("psycopg_pool")  # imported only when used
    if psycopg_pool is not None and isinstance(exc, psycopg_pool.PoolTimeout):
        return True
    if psycopg is not None:
        errors = psycopg.errors
        return isinstance(exc, (errors.LockNotAvailable, errors.DeadlockDetected, errors.SerializationFailure,
                                errors.AdminShutdown, errors.CannotConnectNow)) or type(exc) is psycopg.OperationalError
    return False


def get_db():
    """This thread's connection to the app's database, opened on first use and then kept.

    PostgreSQL: a connection of the process's pool, held by the app context (the request)
    from its first use until its teardown gives it back."""
    url = current_app.config.get("DATABASE_URL")
    if url:
        conn = g.get("_pg_conn")
        if conn is None:
            from web import pg

            found = pg.pool(url)
            conn = g._pg_conn = pg.PgConn(found.getconn(), url, found)
            g._pg_pool = found
        return conn
    path = current_app.config["DATABASE_PATH"]
    cached = getattr(_local, "conn", None)
    if cached is None or cached[0] != path:
        if cached is not None:
            cached[1].close()
        _local.conn = (path, connect(path))
    return _local.conn[1]


def end_request(_exc: BaseException | None = None) -> None:
    """Never leave a transaction open on a kept connection (a failed request may have);
    a pooled PostgreSQL connection goes back to its pool."""
    conn = g.pop("_pg_conn", None)
    if conn is not None:
        pool = g.pop("_pg_pool")
        if conn.raw is not None:  # None: a long poll gave it back and could not get one again
            pool.putconn(conn.raw)  # the pool rolls back an open transaction itself
        return
    cached = getattr(_local, "conn", None)
    if cached is not None and cached[1].in_transaction:
        cached[1].rollback()


db_cli = AppGroup("db", help="The database's schema version: show it, upgrade it.")


@db_cli.command("upgrade")
def upgrade_command() -> None:
    """Apply the pending migrations (migrations/sqlite/), one transaction each."""
    try:
        upgrade(target(current_app.config), echo=click.echo)
    except SchemaError as exc:
        raise click.ClickException(str(exc)) from None


@db_cli.command("version")
def version_command() -> None:
    """Show the database's schema version, the one this release runs on, and what is pending."""
    path = target(current_app.config)
    postgres = is_postgres(path)
    migrations = load_migrations(PG_MIGRATIONS if postgres else MIGRATIONS)
    newest = len(migrations)
    try:
        found = stored_version_pg(path) if postgres else stored_version(path)
    except SchemaError as exc:
        raise click.ClickException(str(exc)) from None
    path = _shown(path)
    if found is None or found == (0, False):
        click.echo(f"{path}: no schema yet; the app creates it at schema version {newest}")
    elif found[0] == newest:
        click.echo(f"{path}: schema version {newest} of {newest}, current")
    else:
        click.echo(_describe(path, found[0], newest, found[1]))
        for migration in migrations[max(found[0], 1):] if found[0] < newest else []:
            click.echo(f"  pending: {migration.name}")


@click.command("init-db")
@click.pass_context
def init_db_command(ctx: click.Context) -> None:
    """The same as `db upgrade` (its older name)."""
    ctx.invoke(upgrade_command)


def init_app(app) -> None:
    app.teardown_appcontext(end_request)
    app.cli.add_command(db_cli)
    app.cli.add_command(init_db_command)
