"""The read-only dashboard: counts by status, recent tasks, and each task's timeline.

Server-rendered (Flask templates in web/templates, no build step); it changes nothing.
"""

from __future__ import annotations

import time
from urllib.parse import quote, urlsplit

from flask import Blueprint, abort, current_app, render_template, request

from web import current, db, task_store
from web.auth import require_dashboard_login

bp = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static",
               static_url_path="/dashboard-static")
bp.before_request(require_dashboard_login)
RECENT = 50
REFRESH_SECONDS = 5


@bp.get("/")
def index():
    status = request.args.get("status") or None
    chosen = request.args.get("integration") or None
    if status is not None and status not in task_store.STATUSES:
        abort(400, f"status must be one of {', '.join(task_store.STATUSES)}")
    names = {i.short_name for i in current.integrations()}
    if chosen is not None and chosen not in names:
        abort(400, f"integration must be one of {', '.join(sorted(names))}")
    conn = db.get_db()
    counts = {i.short_name: task_store.count_by_status(conn, current.table(i.namespace))
              for i in current.integrations()}
    recent = [(i, t) for i in current.integrations() if chosen in (None, i.short_name)
              for t in task_store.list_tasks(conn, current.table(i.namespace), status, RECENT)]
    recent.sort(key=lambda pair: pair[1]["createdAt"], reverse=True)
    short = {i.namespace: i.short_name for i in current.integrations()}
    blocks = [(short.get(b["integration"], b["integration"]), b) for b in task_store.list_blocks(conn)]
    return render_template("dashboard.html", counts=counts, statuses=task_store.STATUSES, blocks=blocks,
                           recent=recent[:RECENT], status=status, chosen=chosen, names=sorted(names),
                           now=time.time(), refresh=REFRESH_SECONDS)


@bp.get("/tasks/<task_id>")
def task_page(task_id: str):
    integration, task = current.find_task(task_id)
    config = current_app.extensions["settings"]
    ui = str(config.get("components.asyncTask.temporal.uiUrl", "http://127.0.0.1:8233")).rstrip("/")
    temporal_namespace = config.get("components.asyncTask.temporal.namespace", "default")
    workflow_id = integration.get_pull_mode_config().build_workflow_id(task)
    workflow_url = f"{ui}/namespaces/{quote(temporal_namespace)}/workflows/{quote(workflow_id, safe='')}"
    return render_template("task.html", task=task, integration=integration,
                           events=task_store.list_events(db.get_db(), task_id), now=time.time(),
                           temporal_url=workflow_url,
                           workflow_id=workflow_id, refresh=REFRESH_SECONDS)


@bp.app_template_filter("age")
def age(created: float | None, now: float | None = None) -> str:
    """A short human age: 42s, 7m, 3h, 2d."""
    if created is None:
        return "-"
    seconds = max(0, int((now or time.time()) - created))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@bp.app_template_filter("web_url")
def web_url(url) -> str | None:
    """`url` if it is an http(s) URL, else None: nothing else is ever rendered as a link or media."""
    if not isinstance(url, str) or any(c.isspace() or ord(c) < 32 for c in url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return url if parts.scheme in ("http", "https") and parts.netloc else None


@bp.app_template_filter("when")
def when_filter(seconds: float | None) -> str:
    return "-" if seconds is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))
