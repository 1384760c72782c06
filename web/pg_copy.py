"""Copy an SQLite task database into an empty PostgreSQL one: `flask --app app db copy --to postgresql://...`.

The source is the app's SQLite file (DATABASE_PATH, or `--from PATH`), read in one read transaction (a
consistent snapshot: stop the web processes first, or what they write afterwards is not copied). It must be
at this release's newest schema version. The target is upgraded to its newest migration first and must then
hold no task, event, block or key (refused otherwise: nothing is written).

Everything goes in one PostgreSQL transaction, streamed with COPY in batches of `batch` rows, so a copy that
fails leaves the target empty. The task tables, integration_blocks and idempotency_keys are copied as they
are; task_events keeps its ids (COPY writes an identity column's values as given) in id order, and the
identity sequence is set past the largest id. The dashboard counters are not copied but rebuilt: the
target's own triggers count the copied rows as they arrive (task_counts from the task rows, task_minutes
from the events) and a fold leaves one row per key. The events' append-only triggers stand throughout:
the copy only inserts.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field

import click
from flask import current_app
from flask.cli import with_appcontext

from web import db

TABLES = ("video_tasks", "image_tasks", "task_events", "integration_blocks", "idempotency_keys")
ORDER = {"task_events": "id"}  # the rest in rowid order
BATCH = 5000


class CopyRefused(Exception):
    """The source or the target is not fit for a copy; nothing was written."""


@dataclass
class CopyReport:
    rows: dict[str, int] = field(default_factory=dict)
    next_event_id: int = 1


def copy_sqlite_to_pg(path: str, url: str, batch: int = BATCH,
                      echo: Callable[[str], None] = lambda line: None) -> CopyReport:
    from web import pg

    found = db.stored_version(path)
    newest = len(db.load_migrations())
    if found is None or not found[1]:
        raise CopyRefused(f"{path}: no SQLite task database there")
    if found[0] != newest:
        raise CopyRefused(f"{path} is at schema version {found[0]} of {newest}; run `flask --app app db upgrade` "
                          "on it first (with DATABASE_URL unset)")
    db.upgrade(url, echo=echo)
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    target = pg.connect(url)
    report = CopyReport()
    try:
        source.execute("BEGIN")  # one snapshot for every table
        with target.transaction():
            for table in TABLES:
                if target.execute_pg(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is not None:
                    raise CopyRefused(f"{db._shown(url)}: {table} has rows already; the copy goes only into an "
                                      "empty database")
            for table in TABLES:
                report.rows[table] = _copy_table(source, target, table, batch)
                echo(f"{table}: {report.rows[table]} rows")
            report.next_event_id = target.execute_pg(
                "SELECT setval(pg_get_serial_sequence('task_events', 'id'), "
                "coalesce((SELECT max(id) FROM task_events), 0) + 1, false)").fetchone()[0]
            target.execute_pg("SELECT fold_task_counts()").fetchall()
        source.execute("COMMIT")
    finally:
        source.close()
        target.close()
    return report


def _copy_table(source: sqlite3.Connection, target, table: str, batch: int) -> int:
    """COPY one table's rows, read `batch` at a time; the columns both sides have (the target's order)."""
    theirs = [r[1] for r in source.execute(f"PRAGMA table_info({table})")]
    ours = [r[0] for r in target.execute_pg(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND table_name = %s ORDER BY ordinal_position", (table,))]
    missing = [c for c in theirs if c not in ours]
    if missing:
        raise CopyRefused(f"{table}: the target has no column {', '.join(missing)}")
    columns = [c for c in ours if c in theirs]
    names = ", ".join(f'"{c}"' for c in columns)
    rows = source.execute(f"SELECT {names} FROM {table} ORDER BY {ORDER.get(table, 'rowid')}")
    count = 0
    with target.raw.cursor().copy(f"COPY {table} ({names}) FROM STDIN") as copy:
        while chunk := rows.fetchmany(batch):
            for row in chunk:
                copy.write_row(row)
            count += len(chunk)
    return count


@click.command("copy")
@with_appcontext
@click.option("--to", "to", required=True, metavar="URL", help="The PostgreSQL database (postgresql://...).")
@click.option("--from", "source", metavar="PATH", help="The SQLite file [default: the app's DATABASE_PATH].")
@click.option("--batch", default=5000, show_default=True, type=click.IntRange(1, 100_000),
              help="Rows read and streamed at a time.")
def copy_command(to: str, source: str | None, batch: int) -> None:
    """Copy the SQLite task database into an empty PostgreSQL one (web/pg_copy.py); stop the web first."""
    if not db.is_postgres(to):
        raise click.ClickException("--to must be a postgresql:// URL")
    path = source or current_app.config["DATABASE_PATH"]
    try:
        report = copy_sqlite_to_pg(path, to, batch, echo=click.echo)
    except (CopyRefused, db.SchemaError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"copied {path} into {db._shown(to)}: {sum(report.rows.values())} rows; "
               f"the next event id is {report.next_event_id}")


def init_app(app) -> None:
    db.db_cli.add_command(copy_command)
