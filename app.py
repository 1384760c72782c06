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

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter

import logs
from integrations import load_integrations
from settings import ConfigError, load_config
from web import dashboard, db, internal_api, media, metrics, openapi, pg_copy, user_api
from web.auth import Credentials
from web.cli import integrations_cli, tasks_cli
from web.edge import MAX_BODY_BYTES
from web.task_store import TaskTable

log = logging.getLogger("app")
# Every answer: no page of ours may be framed, sniffed into another type, or load anything but our own
# styles and http(s) media (a provider's result URL is data, never a script).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' https: http:; "
                               "media-src https: http:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def create_app(test_config: dict | None = None) -> Flask:
    """App factory: defaults, then app.config.json and the environment, then `test_config`."""
    try:
        config = load_config(overrides=test_config)
        credentials = Credentials.from_config(config)
    except ConfigError as exc:
        if test_config is not None:
            raise
        print(f"config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

    if test_config is None:
        logs.setup("web")
    app = Flask(__name__)
    database_url, database_path = db.database_settings(config.get("components.main.databaseUrl"),
                                                       config.get("components.main.databasePath", "data/app.db"))
    if database_url:  # psycopg is loaded only for PostgreSQL
        from web import pg

        pg.use_direct(database_url, config.get("components.main.databaseDirectUrl") or None)
    app.config.update(
        DATABASE_PATH=database_path,
        DATABASE_URL=database_url,
        BATCH_SIZE=int(config.get("components.asyncTask.pullMode.batchSize", 10)),
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
    )
    integrations = load_integrations(config)
    app.extensions["settings"] = config
    app.extensions["credentials"] = credentials
    credentials.warn_if_open()
    app.extensions["integrations"] = {i.namespace: i for i in integrations}
    app.extensions["task_tables"] = {i.namespace: TaskTable.from_config(config, i.namespace) for i in integrations}
    # Path segments that name an integration, its report endpoint or its short name match only those.
    app.url_map.converters["integration"] = one_of(i.namespace for i in integrations)
    app.url_map.converters["report"] = one_of(i.report_api_name for i in integrations)
    app.url_map.converters["kind"] = one_of(i.short_name for i in integrations)

    db.init_app(app)
    pg_copy.init_app(app)  # `db copy`: SQLite into PostgreSQL
    db.check_at_start(db.target(app.config), exit_on_error=test_config is None)
    app.cli.add_command(tasks_cli)
    app.cli.add_command(integrations_cli)
    _register_errors(app)
    app.after_request(_secure)
    app.add_url_rule("/healthz", view_func=_healthz)
    for blueprint in (user_api.bp, internal_api.bp, metrics.bp, dashboard.bp, openapi.bp):
        app.register_blueprint(blueprint)
    media.init_app(app)  # the media store and its routes (web/media.py)
    for integration in integrations:
        integration.setup(app)
    return app


def one_of(names: Iterable[str]) -> type[BaseConverter]:
    """A URL converter matching exactly one of `names`."""
    pattern = "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))
    return type("OneOf", (BaseConverter,), {"regex": f"(?:{pattern})"})


def _healthz():
    """200 while the database answers; open to all, so it shows nothing else."""
    db.get_db().execute("SELECT 1").fetchone()
    return jsonify({"status": "ok"})


def _secure(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def _register_errors(app: Flask) -> None:
    """Every error is JSON: `{"success": false, "error": "..."}`, never an HTML page."""

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        message = exc.description if exc.code != 413 else f"Body too large (at most {MAX_BODY_BYTES} bytes)"
        response = jsonify({"success": False, "error": message})
        response.status_code = exc.code or 500
        for name, value in exc.get_headers():  # WWW-Authenticate, Allow
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception):
        if db.busy(exc):  # nothing was written; a processor or worker sends it again after Retry-After
            log.warning("database busy on %s %s: %s", request.method, request.path, str(exc).splitlines()[0])
            response = jsonify({"success": False, "error": "The database is busy; try again shortly"})
            response.headers["Retry-After"] = "1"
            return response, 503
        log.exception("unhandled error on %s %s", request.method, request.path)
        return jsonify({"success": False, "error": "Internal server error"}), 500
