"""The dashboard: counts by status, tasks per minute over the last hour, recent tasks with their prompt and a
preview, each task's timeline, and cancel and retry buttons.

Server-rendered (Flask templates in web/templates, no script, no build step). A GET
changes nothing. The two actions are POST forms behind the dashboard login and a
per-session CSRF token (web/csrf.py); each answers with a flash message and a
redirect (POST-redirect-GET). Every read is O(page), not O(tasks): counts come from
task_counts, the chart from task_minutes, the recent tasks from the (status,
createdAt) index, one range per status.
"""

from __future__ import annotations

import re
import time
from urllib.parse import quote, urlsplit

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for

from web import chart, csrf, current, db, task_store
from web.auth import require_dashboard_login

bp = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static",
               static_url_path="/dashboard-static")
bp.before_request(require_dashboard_login)
bp.before_request(csrf.check)
bp.record_once(lambda state: csrf.init_app(state.app))
RECENT = 50
REFRESH_SECONDS = 5
PROMPT_CHARS = 120
MEDIA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # a stored copy's file name: no path, no dot-file
LOCAL_PATH = re.compile(r"/(?![/\\])[^\s\\]*")  # where an action may send the browser back to


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
    shown = [i.namespace for i in current.integrations() if chosen in (None, i.short_name)]
    now = time.time()
    return render_template("dashboard.html", counts=counts, statuses=task_store.STATUSES, blocks=blocks,
                           recent=recent[:RECENT], status=status, chosen=chosen, names=sorted(names),
                           chart=chart.per_minute(conn, shown, now), now=now, refresh=REFRESH_SECONDS)


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


@bp.post("/tasks/<task_id>/cancel")
def cancel(task_id: str):
    """Cancel a task (as `flask --app app tasks cancel`): a pending one, or one waiting for its retry, at once;
    a queued or processing one's workflow through Temporal (a processor delivers it)."""
    integration, _ = current.find_task(task_id)
    try:
        outcome = task_store.request_cancel(db.get_db(), current.table(integration.namespace), task_id,
                                            "cancelled from the dashboard")
    except task_store.TaskNotFound:
        abort(404, "Task not found")
    except task_store.TransitionRefused as exc:
        flash(f"Task {task_id} was not cancelled: {exc}", "error")
    else:
        if outcome.cancelling:
            flash(f"Task {task_id} is {outcome.status}: its cancel is asked for; its workflow is being cancelled "
                  "and will report cancelled.", "ok")
        else:
            flash(f"Task {task_id} is {outcome.status}.", "ok")
    return back()


@bp.post("/tasks/<task_id>/retry")
def retry(task_id: str):
    """An operator's retry of a failed task (as `flask --app app tasks retry`): pending again, one more attempt."""
    integration, _ = current.find_task(task_id)
    try:
        outcome = task_store.transition(db.get_db(), current.table(integration.namespace), task_id,
                                        task_store.Report.operator_retry())
    except task_store.TaskNotFound:
        abort(404, "Task not found")
    except task_store.TransitionRefused as exc:
        flash(f"Task {task_id} was not retried: {exc}", "error")
    else:
        flash(f"Task {task_id} is {outcome.status} again; a processor will claim it.", "ok")
    return back()


def back():
    """303 to the page the form was on (a path of this site only), else the dashboard."""
    target = request.form.get("next", "")
    return redirect(target if LOCAL_PATH.fullmatch(target) else url_for("dashboard.index"), 303)


@bp.app_template_filter("prompt")
def prompt(task: dict) -> str:
    """The task's prompt cut to PROMPT_CHARS (the template escapes it), or ''."""
    params = task.get("requestParams")
    text = params.get("prompt") if isinstance(params, dict) else None
    if not isinstance(text, str):
        return ""
    return text if len(text) <= PROMPT_CHARS else text[:PROMPT_CHARS - 1].rstrip() + "…"


@bp.app_template_filter("stored_copies")
def stored_copies(task: dict) -> list[tuple[str, str, str]]:
    """(kind "img" | "video", URL, name) of each copy of the task's media that we store (result.media, names
    served at /dashboard/media/<id>/<name>): the video, its last frame, the images. A name that is not a
    plain file name is skipped."""
    result = task.get("result")
    media = result.get("media") if isinstance(result, dict) else None
    if not isinstance(media, dict):
        return []
    images = media.get("imageUrls")
    named = [("video", media.get("videoUrl")), ("img", media.get("lastFrameUrl")),
             *[("img", name) for name in (images if isinstance(images, list) else [])]]
    return [(kind, f"/dashboard/media/{quote(task['id'], safe='')}/{name}", name) for kind, name in named
            if isinstance(name, str) and MEDIA_NAME.fullmatch(name)]


@bp.app_template_filter("preview")
def preview(task: dict) -> tuple[str, str] | None:
    """("img" | "video", URL) to show in the task list: our stored copy first (the last frame or first image,
    else the video), then the provider's URL (only if http(s)); None when there is none."""
    stored = stored_copies(task)
    for kind, url, _ in sorted(stored, key=lambda copy: copy[0] != "img"):
        return kind, url
    result = task.get("result")
    if not isinstance(result, dict):
        return None
    images = result.get("imageUrls")
    for kind, url in (("img", result.get("lastFrameUrl")),
                      ("img", images[0] if isinstance(images, list) and images else None),
                      ("video", result.get("videoUrl"))):
        if web_url(url):
            return kind, url
    return None


@bp.app_template_global("can_cancel")
def can_cancel(task: dict) -> bool:
    """Not finished (completed, cancelled, failed for good) and no cancel asked for yet."""
    return not task_store.finished(task) and task.get("cancelRequestedAt") is None


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


@bp.app_template_filter("minute")
def minute_filter(seconds: float) -> str:
    return time.strftime("%H:%M", time.localtime(seconds))
