"""Operator commands: `flask --app app tasks list|show|retry|cancel|fail|stats` and `integrations status|resume`.

They read the database directly (they run beside the web process) and write
only through web/task_store.py, like everything else. They show the full
stored detail (errors as written, not the public message users get), with
every control character escaped (logs.escape_controls): text from providers or
clients never drives the operator's terminal.
"""

from __future__ import annotations

import json
import logging
import time

import click
from flask.cli import AppGroup

import logs
from logs import escape_controls
from web import current, db, task_store
from web.dashboard import age
from web.task_store import Report, TransitionRefused

tasks_cli = AppGroup("tasks", help="Inspect tasks, retry failed ones, cancel them, fail stranded ones.")
# Accepted --integration values: the short names and the integrations' names.
INTEGRATION_NAMES = ["video", "image", "fangzhouVideoGeneration", "nanobanana2ImageGeneration"]


def pick(name: str | None) -> list:
    return [i for i in current.integrations() if name in (None, i.short_name, i.namespace)]


def echo(text: str) -> None:
    """Print one line for the operator, its control characters escaped."""
    click.echo(escape_controls(text))


def refuse(message: str) -> click.ClickException:
    return click.ClickException(escape_controls(message))


def find(task_id: str):
    integration, task = current.lookup(task_id)
    if task is None:
        raise refuse(f"No task with id {task_id!r}")
    return integration, task


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [[escape_controls(str(c)) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@tasks_cli.command("list")
@click.option("--status", type=click.Choice(task_store.STATUSES), help="Only tasks in this status.")
@click.option("--integration", type=click.Choice(INTEGRATION_NAMES), help="Only this integration's tasks.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
def list_command(status: str | None, integration: str | None, limit: int) -> None:
    """The newest tasks, newest first."""
    found = [(i, t) for i in pick(integration)
             for t in task_store.list_tasks(db.get_db(), current.table(i.namespace), status, limit)]
    found.sort(key=lambda pair: pair[1]["createdAt"], reverse=True)
    rows = [[t["id"], i.short_name, t["status"], t["attempts"], age(t["createdAt"]), (t["error"] or "")[:60]]
            for i, t in found[:limit]]
    if not rows:
        echo("No tasks match.")
        return
    print_table(["ID", "INTEGRATION", "STATUS", "ATTEMPTS", "AGE", "LAST ERROR"], rows)


@tasks_cli.command("show")
@click.argument("task_id")
def show_command(task_id: str) -> None:
    """One task and its timeline of events."""
    integration, task = find(task_id)
    for key in ("id", "status", "attempts", "attemptsRefunded", "startedAt", "createdAt", "updatedAt", "retryAt",
                "cancelRequestedAt", "externalId", "error"):
        echo(f"{key + ':':<15}{task.get(key) if task.get(key) is not None else '-'}")
    echo(f"{'integration:':<15}{integration.namespace}")
    echo(f"{'request:':<15}{json.dumps(task['requestParams'])}")
    echo(f"{'result:':<15}{json.dumps(task['result']) if task['result'] is not None else '-'}")
    echo("")
    events = task_store.list_events(db.get_db(), task_id)
    print_table(["WHEN", "STATUS", "ATTEMPT", "DETAIL"],
          [[time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["createdAt"])), e["status"], e["attempt"],
            (e["error"] or e["externalId"] or "")[:70]] for e in events])


@tasks_cli.command("retry")
@click.argument("task_id")
def retry_command(task_id: str) -> None:
    """Make a failed task claimable again (one more attempt), recorded as an event."""
    integration, _ = find(task_id)
    try:
        outcome = task_store.transition(db.get_db(), current.table(integration.namespace), task_id,
                                        Report.operator_retry())
    except TransitionRefused as exc:
        raise refuse(str(exc)) from None
    echo(f"Task {task_id} is {outcome.status} again (attempts so far: {outcome.attempt}); "
         f"a processor will claim it.")


@tasks_cli.command("cancel")
@click.argument("task_id")
def cancel_command(task_id: str) -> None:
    """Cancel a task. Pending (or waiting for a retry): cancelled now. Queued or processing: its workflow is
    cancelled through Temporal by a processor; it cancels the provider's job where the provider allows."""
    integration, _ = find(task_id)
    try:
        outcome = task_store.request_cancel(db.get_db(), current.table(integration.namespace), task_id,
                                            "cancelled by an operator")
    except TransitionRefused as exc:
        raise refuse(str(exc)) from None
    if outcome.cancelling:
        echo(f"Task {task_id} is {outcome.status}: its cancel is asked for; a processor cancels its workflow, "
             f"which cancels the provider's job where it can and reports cancelled.")
    else:
        echo(f"Task {task_id} is {outcome.status}.")


@tasks_cli.command("fail")
@click.argument("task_id")
@click.option("--reason", default="failed by an operator", show_default=True, help="The error recorded.")
@click.option("--retry/--no-retry", default=True, show_default=True,
              help="Whether a processor may claim it again (while attempts are left).")
def fail_command(task_id: str, reason: str, retry: bool) -> None:
    """Fail a queued or processing task at its current attempt, recorded as an event.

    The way out for a task whose workflow is gone (terminated in the Temporal UI,
    or lost with a Temporal server's state): nothing else would ever report on it.
    A run of that attempt still going is fenced: its reports get 409.
    """
    integration, task = find(task_id)
    table = current.table(integration.namespace)
    if task["status"] not in ("queued", "processing"):
        raise refuse(f"Cannot fail a {task['status']} task: only a queued or processing task can be failed")
    report = Report.progress("failed", task["attempts"], error=reason, retryable=retry)
    try:
        outcome = task_store.transition(db.get_db(), table, task_id, report)
    except TransitionRefused as exc:  # it moved on since we looked
        raise refuse(str(exc)) from None
    again = task_store.get_task(db.get_db(), table, task_id)["retryable"]
    echo(f"Task {task_id} is {outcome.status} at attempt {outcome.attempt}; "
         + ("a processor will claim it again." if again else "it will not run again."))


@tasks_cli.command("stats")
def stats_command() -> None:
    """Counts by status per integration, and the age of the oldest pending task."""
    now = time.time()
    rows = []
    for integration in current.integrations():
        table = current.table(integration.namespace)
        counts = task_store.count_by_status(db.get_db(), table)
        oldest = task_store.oldest_pending_created_at(db.get_db(), table)
        rows.append([integration.short_name, *(counts[s] for s in task_store.STATUSES), sum(counts.values()),
                     age(oldest, now)])
    print_table(["INTEGRATION", *(s.upper() for s in task_store.STATUSES), "TOTAL", "OLDEST PENDING"], rows)


integrations_cli = AppGroup("integrations", help="See which integrations are blocked by their provider; resume one.")


@integrations_cli.command("status")
def integrations_status_command() -> None:
    """Each integration: running, or blocked since when, why, and when the next probe is due."""
    now = time.time()
    rows = []
    for integration in current.integrations():
        block = task_store.get_block(db.get_db(), integration.namespace)
        if block is None:
            rows.append([integration.short_name, "running", "", "", ""])
        else:
            probe = max(block["probeAt"] - now, 0)
            rows.append([integration.short_name, "blocked", age(block["since"], now), f"in {probe:.0f}s",
                         block["reason"]])
    print_table(["INTEGRATION", "STATE", "BLOCKED FOR", "NEXT PROBE", "WHY"], rows)


@integrations_cli.command("resume")
@click.argument("name", type=click.Choice(INTEGRATION_NAMES))
def integrations_resume_command(name: str) -> None:
    """End a block now (after a top-up, say): its tasks are claimed again at once."""
    integration = pick(name)[0]
    block = task_store.resume_integration(db.get_db(), integration.namespace)
    if block is None:
        echo(f"{integration.short_name} is not blocked; nothing to do.")
        return
    logs.event(logging.getLogger("web.tasks"), "integration resumed by an operator", logging.WARNING,
               integration=integration.namespace, reason=block["reason"])
    echo(f"{integration.short_name} resumed (it was blocked for {age(block['since'])}: {block['reason']}).")
