"""Serving the media the worker copied into our store (integrations/shared/media.py), and naming them to users.

    GET /api/tasks/<id>/media/<name>        under the client key (as the rest of the user API)
    GET /dashboard/media/<id>/<name>        behind the dashboard login (its thumbnails and players)

Only names the task's result lists under `media` are served: an unknown task or name is a 404, a malformed
name a 400 (so no path can leave the task's folder). A single byte range is answered 206 (video players seek
with them); the stored type is sent with `nosniff`.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, abort, current_app, has_request_context, jsonify, request, url_for

from integrations.shared.media import NAME, MediaNotFound, MediaStore, StorageFailed, media_store
from web import current
from web.auth import require_client_key, require_dashboard_login

bp = Blueprint("media", __name__)
CACHE = "private, max-age=3600"  # a stored file never changes under its name; only its holder may keep it


def init_app(app) -> None:
    """The configured store (MEDIA_DIR or MEDIA_S3_BUCKET), built once."""
    app.extensions["media"] = media_store(app.extensions["settings"])
    app.register_blueprint(bp)


def store() -> MediaStore:
    return current_app.extensions["media"]


@bp.get("/api/tasks/<task_id>/media/<name>")
def task_media(task_id: str, name: str):
    require_client_key()
    return serve(task_id, name)


@bp.get("/dashboard/media/<task_id>/<name>")
def dashboard_media(task_id: str, name: str):
    require_dashboard_login()
    return serve(task_id, name)


def stored_names(result: Any) -> list[str]:
    """Every name a result's `media` lists."""
    media = result.get("media") if isinstance(result, dict) else None
    if not isinstance(media, dict):
        return []
    names = []
    for value in media.values():
        names += [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str)]
    return names


def serve(task_id: str, name: str) -> Response:
    if not NAME.fullmatch(name):
        abort(400, "Not a media name")
    _, task = current.find_task(task_id)
    if name not in stored_names(task.get("result")):
        abort(404, "No such media for this task")
    try:
        item = store().stat(task_id, name)
    except MediaNotFound:
        abort(404, "No such media for this task")
    except StorageFailed:
        current_app.logger.exception("media store failed")
        abort(503, "Media storage is unavailable; try again")
    start, end, status = 0, item.size, 200
    wanted = request.range
    if wanted is not None and wanted.units == "bytes" and len(wanted.ranges) == 1:  # several: the whole file
        span = wanted.range_for_length(item.size)
        if span is None:
            refused = jsonify({"success": False, "error": "Range not satisfiable"})
            refused.status_code = 416
            refused.headers["Content-Range"] = f"bytes */{item.size}"
            return refused
        (start, end), status = span, 206
    try:
        body = store().read(task_id, name, start, end)
    except MediaNotFound:
        abort(404, "No such media for this task")
    except StorageFailed:
        current_app.logger.exception("media store failed")
        abort(503, "Media storage is unavailable; try again")
    response = Response(body, status=status, mimetype=item.content_type, direct_passthrough=True)
    response.headers.update({"Content-Length": str(end - start), "Accept-Ranges": "bytes", "Cache-Control": CACHE,
                             "X-Content-Type-Options": "nosniff",
                             "Content-Disposition": f'inline; filename="{name}"'})
    if status == 206:
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{item.size}"
    return response


def public_result(task_id: str, result: Any) -> Any:
    """A result as users see it: its `media` names as absolute URLs of our route (provider URLs untouched)."""
    media = result.get("media") if isinstance(result, dict) else None
    if not isinstance(media, dict):
        return result

    def link(name: Any) -> Any:
        if not isinstance(name, str) or not NAME.fullmatch(name):
            return None
        if has_request_context():
            return url_for("media.task_media", task_id=task_id, name=name, _external=True)
        return f"/api/tasks/{task_id}/media/{name}"

    shown = {field: [link(n) for n in value] if isinstance(value, list) else link(value)
             for field, value in media.items()}
    return {**result, "media": shown}
