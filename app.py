"""The web process: records generation requests and serves the pull-mode APIs.

    flask --app app db upgrade       create the schema or bring it up to date (the Procfile's release step)
    flask --app app run              development server
    gunicorn 'app:create_app()'      production (see Procfile)

It never starts a workflow: the processor pulls tasks from it (docs/design.md §1).
Everything only this process imports lives in web/.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter

import logs
from integrations import load_integrations
from settings import ConfigError, load_config
from web import dashboard, db, internal_api, metrics, user_api
from web.cli import tasks_cli
from web.task_store import TaskTable

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
        BATCH_SIZE=int(config.get("components.asyncTask.pullMode.batchSize", 10)),
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
    )
    integrations = load_integrations(config)
    app.extensions["settings"] = config
    app.extensions["integrations"] = {i.namespace: i for i in integrations}
    app.extensions["task_tables"] = {i.namespace: TaskTable.from_config(config, i.namespace) for i in integrations}
    # Path segments that name an integration, its report endpoint or its short name match only those.
    app.url_map.converters["integration"] = one_of(i.namespace for i in integrations)
    app.url_map.converters["report"] = one_of(i.report_api_name for i in integrations)
    app.url_map.converters["kind"] = one_of(i.short_name for i in integrations)

    db.init_app(app)
    db.check_at_start(app.config["DATABASE_PATH"], exit_on_error=test_config is None)
    app.cli.add_command(tasks_cli)
    _register_errors(app)
    for blueprint in (user_api.bp, internal_api.bp, metrics.bp, dashboard.bp):
        app.register_blueprint(blueprint)
    for integration in integrations:
        integration.setup(app)
    return app


def one_of(names: Iterable[str]) -> type[BaseConverter]:
    """A URL converter matching exactly one of `names`."""
    pattern = "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))
    return type("OneOf", (BaseConverter,), {"regex": f"(?:{pattern})"})


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
