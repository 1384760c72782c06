"""Push-mode baseline for the benchmark: the create request itself claims the task and starts its workflow.

This is the plan's old design (a side effect in the request path), served by
the same app under the same gunicorn settings, so the latency comparison
isolates the cost of pulling.

    gunicorn 'bench.push_app:create_push_app()'
"""

from __future__ import annotations

import threading

from flask import jsonify, request

import db
import task_store
from app import create_app
from processor import TemporalBridge, start_workflow

_local = threading.local()


def create_push_app():
    app = create_app()
    config = app.extensions["settings"]
    video = next(i for i in app.extensions["integrations"] if i.namespace == "fangzhouVideoGeneration")
    pull = video.get_pull_mode_config()
    policy = task_store.Policy(video.max_attempts, video.stuck_timeout_seconds)

    def bridge() -> TemporalBridge:
        """One Temporal client per worker process, made after the fork."""
        if not hasattr(_local, "bridge"):
            _local.bridge = TemporalBridge(config.get("components.asyncTask.temporal.address"),
                                           config.get("components.asyncTask.temporal.namespace", "default"))
            _local.bridge.ensure_healthy()
        return _local.bridge

    @app.post("/push/video/generate")
    def push_create():
        params = video.validate_request(request.get_json(force=True, silent=True))
        conn = db.get_db()
        task = task_store.create_task(conn, video.entity, video.namespace, params)
        claim = task_store.transition(conn, video.entity, video.namespace, task["id"],
                                      task_store.Report("queued"), policy)
        temporal = bridge()
        temporal.call(start_workflow(temporal.client, pull, task, claim.attempt))
        task_store.transition(conn, video.entity, video.namespace, task["id"],
                              task_store.Report("queued", attempt=claim.attempt), policy)
        return jsonify({"taskId": task["id"], "status": "queued"}), 201

    return app
