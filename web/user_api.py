"""The user API: create a task, read it and its events (docs/design.md §5); errors shown as web/public.py words them."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, abort, jsonify

import logs
from integrations import Integration
from integrations.shared.validation import RequestInvalid
from web import current, db, public, task_store
from web.auth import require_client_key
from web.edge import json_body

log = logging.getLogger("app")

bp = Blueprint("user_api", __name__)
bp.before_request(require_client_key)


@bp.post("/api/<kind:kind>/generate")
def create_task(kind: str):
    """`POST /api/video/generate`, `POST /api/image/generate`: a new pending task (201)."""
    integration = next(i for i in current.integrations() if i.short_name == kind)
    try:
        params = integration.validate_request(json_body())
    except RequestInvalid as exc:
        abort(400, str(exc))
    task = task_store.create_task(db.get_db(), current.table(integration.namespace), params)
    logs.event(log, "task created", task=task["id"], attempt=0, integration=integration.namespace)
    return jsonify({"taskId": task["id"], "status": task["status"]}), 201


@bp.get("/api/tasks/<task_id>")
def show_task(task_id: str):
    integration, task = current.find_task(task_id)
    return jsonify(public_task(integration, task))


@bp.get("/api/tasks/<task_id>/events")
def show_events(task_id: str):
    _, task = current.find_task(task_id)
    return jsonify({"events": public.events(task_store.list_events(db.get_db(), task_id), task)})


def public_task(integration: Integration, task: dict) -> dict[str, Any]:
    """The task as users see it; `namespace` (a wire name) is the integration's name."""
    return public.task(integration, task)
