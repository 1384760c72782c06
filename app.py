"""The web process: records generation requests and serves the pull-mode APIs.

    flask --app app init-db          create the schema
    flask --app app run              development server
    gunicorn 'app:create_app()'      production (see Procfile)

It never starts a workflow: the processor pulls tasks from it (DESIGN §1).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from flask import Flask, abort, jsonify, request
from werkzeug.exceptions import HTTPException

import dashboard
import db
import logs
import task_store
from cli import tasks_cli
from integrations import Integration, build_api_path, load_integrations
from integrations.shared.validation import RequestInvalid
from settings import ConfigError, load_config

MAX_BODY_BYTES = 256 * 1024
log = logging.getLogger("app")


def create_app(test_config: dict | None = None) -> Flask:
    """App factory: defaults, then app.config.json and the environment, then `test_config`."""
    try:
        config = load_config(overrides=test_config)
        token = config.require("components.asyncTask.internalApiToken")
    except ConfigError as exc:
        if test_config is not None:
            raise
        print(f"config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

    if test_config is None:
        logs.setup("web")
    app = Flask(__name__)
    app.config.update(
        DATABASE_PATH=config.get("components.main.databasePath", "data/app.db"),
        INTERNAL_API_TOKEN=token,
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        JSON_SORT_KEYS=False,
    )
    app.extensions["settings"] = config
    app.extensions["integrations"] = integrations = load_integrations(config)

    db.init_app(app)
    app.cli.add_command(tasks_cli)
    db.init_db(app.config["DATABASE_PATH"])
    _register_errors(app)
    _register_integrations(app, integrations)
    _register_user_api(app, integrations)
    app.register_blueprint(dashboard.bp)
    for integration in integrations:
        integration.setup(app)
    return app


def _register_errors(app: Flask) -> None:
    """Every error is JSON: `{"success": false, "error": "..."}`, never an HTML page."""

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        message = exc.description if exc.code != 413 else f"Body too large (at most {MAX_BODY_BYTES} bytes)"
        return jsonify({"success": False, "error": message}), exc.code

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return jsonify({"success": False, "error": "Internal server error"}), 500


def _register_integrations(app: Flask, integrations: list[Integration]) -> None:
    for integration in integrations:
        for api in integration.create_apis():
            path = "/" + build_api_path(api.namespace, api.name)
            app.add_url_rule(path, endpoint=f"{api.namespace}.{api.name}", view_func=api.view,
                             methods=list(api.methods))


def _register_user_api(app: Flask, integrations: list[Integration]) -> None:
    by_namespace = {i.namespace: i for i in integrations}

    for integration in integrations:
        app.add_url_rule(integration.user_path, endpoint=f"{integration.namespace}.generate",
                         view_func=_create_view(integration), methods=["POST"])

    def find(task_id: str) -> tuple[Integration, dict]:
        integration, task = task_store.find_task(db.get_db(), integrations, task_id)
        if task is None:
            abort(404, "Task not found")
        return integration, task

    @app.get("/api/tasks/<task_id>")
    def show_task(task_id: str):
        integration, task = find(task_id)
        return jsonify(_public_task(integration, task))

    @app.get("/api/tasks/<task_id>/events")
    def show_events(task_id: str):
        find(task_id)
        return jsonify({"events": task_store.list_events(db.get_db(), task_id)})

    @app.get("/healthz")
    def healthz():
        db.get_db().execute("SELECT 1").fetchone()
        return jsonify({"status": "ok", "integrations": sorted(by_namespace)})


def _create_view(integration: Integration):
    def create_task():
        body = request.get_json(force=True, silent=True)
        try:
            params = integration.validate_request(body)
        except RequestInvalid as exc:
            abort(400, str(exc))
        task = task_store.create_task(db.get_db(), integration.entity, integration.namespace, params)
        logs.event(log, "task created", task=task["id"], attempt=0, namespace=integration.namespace)
        return jsonify({"taskId": task["id"], "status": task["status"]}), 201

    create_task.__name__ = f"{integration.namespace}_create_task"
    return create_task


def _public_task(integration: Integration, task: dict) -> dict[str, Any]:
    keys = ("id", "status", "attempts", "startedAt", "createdAt", "updatedAt",
            "requestParams", "externalId", "result", "error")
    return {"namespace": integration.namespace, **{k: task.get(k) for k in keys}}
