"""Push-mode baseline for the benchmark: the create request itself claims the task and starts its workflow.

This is the plan's old design (a side effect in the request path), served by
the same app under the same gunicorn settings, so the latency comparison
isolates the cost of pulling.

    gunicorn 'bench.push_app:create_push_app()'
"""

from __future__ import annotations

import threading

from flask import jsonify, request

from app import create_app
from processor import TemporalBridge, start_workflow
from settings import temporal_connection
from web import db, task_store
from web.task_store import Report

_local = threading.local()


def create_push_app():
    app = create_app()
    config = app.extensions["settings"]
    video = app.extensions["integrations"]["fangzhouVideoGeneration"]
    table = app.extensions["task_tables"][video.namespace]
    pull = video.get_pull_mode_config()

    def bridge() -> TemporalBridge:
        """One Temporal client per worker process, made after the fork."""
        if not hasattr(_local, "bridge"):
            _local.bridge = TemporalBridge(temporal_connection(config))
            _local.bridge.ensure_healthy()
        return _local.bridge

    @app.post("/push/video/generate")
    def push_create():
        params = video.validate_request(request.get_json(force=True, silent=True))
        conn = db.get_db()
        task = task_store.create_task(conn, table, params)
        claim = task_store.transition(conn, table, task["id"], Report.claim())
        temporal = bridge()
        temporal.call(start_workflow(temporal.client, pull, task, claim.attempt))
        task_store.transition(conn, table, task["id"], Report.dispatched(claim.attempt))
        return jsonify({"taskId": task["id"], "status": "queued"}), 201

    return app
