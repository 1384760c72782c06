"""The user API: create a task, read it and its events (docs/design.md §5); errors shown as web/public.py words them."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from typing import Any

from flask import Blueprint, abort, jsonify, request

import logs
from integrations import Integration
from integrations.shared.validation import RequestInvalid
from web import current, db, public, task_store
from web.auth import bearer, require_client_key
from web.edge import json_body

log = logging.getLogger("app")

bp = Blueprint("user_api", __name__)
bp.before_request(require_client_key)
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # visible ASCII, as Stripe and the IETF draft allow


@bp.post("/api/<kind:kind>/generate")
def create_task(kind: str):
    """`POST /api/video/generate`, `POST /api/image/generate`: a new pending task (201).

    With an `Idempotency-Key` header, a retry of the same request (same client, key and body) within 24 h
    answers the first task again (200, the first answer's body, `Idempotent-Replayed: true`): a client whose
    create timed out can send it again without paying twice. The same key with another body is a 422.
    """
    integration = next(i for i in current.integrations() if i.short_name == kind)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
        abort(400, "Idempotency-Key must be 1 to 255 visible ASCII characters")
    body = json_body()
    try:
        params = integration.validate_request(body)
    except RequestInvalid as exc:
        abort(400, str(exc))
    table = current.table(integration.namespace)
    if key is None:
        task_id, created = task_store.create_task(db.get_db(), table, params)["id"], True
    else:
        scope = hashlib.sha256(bearer().encode()).hexdigest()  # per client; the client key itself is not kept
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        fingerprint = hashlib.sha256(f"{request.path}\n{canonical}".encode()).hexdigest()
        try:
            task_id, created = task_store.create_task_once(db.get_db(), table, params, scope, key, fingerprint)
        except task_store.KeyReused as exc:
            abort(422, str(exc))
    answer = jsonify({"taskId": task_id, "status": "pending"})
    if not created:
        logs.event(log, "task create replayed (Idempotency-Key)", task=task_id, integration=integration.namespace)
        answer.headers["Idempotent-Replayed"] = "true"
        return answer, 200
    logs.event(log, "task created", task=task_id, attempt=0, integration=integration.namespace)
    return answer, 201


@bp.get("/api/tasks/<task_id>")
def show_task(task_id: str):
    integration, task = current.find_task(task_id)
    return jsonify(public_task(integration, task))


@bp.post("/api/tasks/<task_id>/cancel")
def cancel_task(task_id: str):
    """Cancel a task: 200 with the task once it is `cancelled` (it was pending or waiting for a retry, or was
    cancelled before); 202 with the task while its workflow is being cancelled through Temporal (it ends
    `cancelled`, or `completed`/`failed` if that landed first: one outcome); 409 if it is finished."""
    integration, _ = current.find_task(task_id)
    table = current.table(integration.namespace)
    try:
        outcome = task_store.request_cancel(db.get_db(), table, task_id, "cancelled by the client")
    except task_store.TaskNotFound:
        abort(404, "Task not found")
    except task_store.TransitionRefused as exc:
        abort(409, str(exc))
    if not outcome.duplicate:
        logs.event(log, "cancel requested" if outcome.cancelling else "task cancelled", task=task_id,
                   attempt=outcome.attempt, integration=integration.namespace)
    task = task_store.get_task(db.get_db(), table, task_id)
    if task is None:  # pruned between the cancel and this read (a cancelled task, old enough)
        abort(404, "Task not found")
    return jsonify(public_task(integration, task)), 202 if outcome.cancelling else 200


@bp.get("/api/tasks/<task_id>/events")
def show_events(task_id: str):
    _, task = current.find_task(task_id)
    return jsonify({"events": public.events(task_store.list_events(db.get_db(), task_id), task)})


def public_task(integration: Integration, task: dict) -> dict[str, Any]:
    """The task as users see it; `namespace` (a wire name) is the integration's name."""
    return public.task(integration, task)
