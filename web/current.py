"""The running app's integrations and their task tables, as the views and commands reach them.

Both are built once, in `app.create_app`: one TaskTable (table, columns, claim
policy) per integration, kept in `app.extensions`.
"""

from __future__ import annotations

from flask import abort, current_app

from integrations import Integration
from web import db, task_store
from web.task_store import TaskTable


def integrations() -> list[Integration]:
    return list(current_app.extensions["integrations"].values())


def integration(name: str) -> Integration:
    return current_app.extensions["integrations"][name]


def table(name: str) -> TaskTable:
    return current_app.extensions["task_tables"][name]


def tables() -> list[TaskTable]:
    return list(current_app.extensions["task_tables"].values())


def lookup(task_id: str) -> tuple[Integration | None, dict | None]:
    """The integration whose table holds `task_id`, and the task; (None, None) if none does."""
    found, task = task_store.find_task(db.get_db(), tables(), task_id)
    return (integration(found.integration), task) if found else (None, None)


def find_task(task_id: str) -> tuple[Integration, dict]:
    """Like `lookup`, but a 404 when no table holds it."""
    found, task = lookup(task_id)
    if task is None:
        abort(404, "Task not found")
    return found, task
