"""The public view of a task and its events: what `GET /api/tasks/<id>[/events]` shows users.

The stored `error` is for operators (the CLI, the dashboard, the logs): it may
name URLs, exceptions, workflow ids. Users get the clean message
`integrations.shared.public_errors.public_error` makes of it: the provider's own
words, "The provider is unavailable; retrying" while the task will run again, or
"The task failed: <short reason>".
"""

from __future__ import annotations

from typing import Any

from integrations import Integration
from integrations.shared.public_errors import public_error

FIELDS = ("id", "status", "attempts", "attemptsRefunded", "startedAt", "createdAt", "updatedAt",
          "requestParams", "externalId", "result", "error", "retryAt", "cancelRequestedAt")
EVENT_FIELDS = ("status", "attempt", "externalId", "data", "error", "createdAt")
WAITING_FOR_PROVIDER = "The provider is not accepting new work for now; the task waits its turn"


def will_retry(task: dict) -> bool:
    """The task failed and will be claimed again (retryable is set only while attempts are left)."""
    return task.get("status") == "failed" and bool(task.get("retryable"))


def task(integration: Integration, task: dict) -> dict[str, Any]:
    """The task as users see it; `namespace` (a wire name) is the integration's name."""
    shown = {"namespace": integration.namespace, **{k: task.get(k) for k in FIELDS}}
    if task.get("status") == "failed":
        shown["error"] = public_error(task.get("error"), will_retry(task))
    else:  # only a claim handed back by a blocked integration leaves a text on a task that has not failed
        shown["error"] = WAITING_FOR_PROVIDER if task.get("error") else None
    return shown


def events(events: list[dict], task: dict) -> list[dict[str, Any]]:
    """A task's events (oldest first, as task_store.list_events returns them) as users see them.

    A `failed` event's error is its public message: "retrying" if the next event
    is the next attempt's claim (`queued`), or, for the last event, if the task
    will run again. Other events carry no error for users (an operator's note).
    """
    shown = []
    for index, event in enumerate(events):
        item = {k: event.get(k) for k in EVENT_FIELDS}
        if event.get("status") == "failed":
            following = events[index + 1]["status"] if index + 1 < len(events) else None
            again = following == "queued" if following is not None else will_retry(task)
            item["error"] = public_error(event.get("error"), again)
        else:
            item["error"] = None
        shown.append(item)
    return shown
