"""Fake Volcengine Ark content generation tasks API (paths, auth, shapes and statuses of the real one)."""

from __future__ import annotations

import time

from flask import jsonify, request

from fakes.common import create_fake_app, serve

app, book = create_fake_app("fake-ark")
BASE = "/api/v3/contents/generations/tasks"


def error(status: int, code: str, message: str, kind: str = "BadRequest", param: str = ""):
    return jsonify({"error": {"code": code, "message": message, "param": param, "type": kind}}), status


@app.before_request
def check():
    if request.path.startswith("/_fake"):
        return None
    if request.headers.get("Authorization") != f"Bearer {book.api_key}":
        return error(401, "AuthenticationError", "The API key in the request is missing or invalid.",
                     "Unauthorized")
    if book.random_error():
        return error(500, "InternalServiceError", "The service encountered an unexpected internal error.",
                     "InternalServerError")
    return None


@app.post(BASE)
def create_task():
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not body.get("model") or not isinstance(body.get("content"), list):
        return error(400, "MissingParameter", "model and content are required", param="content")
    texts = [c.get("text", "") for c in body["content"] if isinstance(c, dict) and c.get("type") == "text"]
    if not texts:
        return error(400, "InvalidParameter", "content must hold a text prompt", param="content")
    prompt = texts[0]
    refusal = book.create_refusal(prompt)
    if refusal == 429:
        return error(429, "RateLimitExceeded.EndpointRPMExceeded", "Request rate limit exceeded", "TooManyRequests")
    if refusal == 500:
        return error(500, "InternalServiceError", "The service encountered an unexpected internal error.",
                     "InternalServerError")
    if "[reject]" in prompt:
        return error(400, "InputTextSensitiveContentDetected",
                     "The request failed because the input text may contain sensitive information.")
    job = book.add("cgt-", prompt, body)
    return jsonify({"id": job.id})


@app.get(f"{BASE}/<task_id>")
def get_task(task_id: str):
    job = book.jobs.get(task_id)
    if job is None:
        return error(404, "ResourceNotFound", f"The specified task {task_id} is not found.", "NotFound")
    status = job.phase()
    body = {"id": job.id, "model": job.body["model"], "status": status,
            "created_at": int(job.created), "updated_at": int(time.time()),
            "ratio": job.body.get("ratio", "16:9"), "duration": job.body.get("duration", 5),
            "resolution": job.body.get("resolution", "720p"), "seed": job.body.get("seed", 42)}
    if status == "succeeded":
        body["content"] = {"video_url": f"https://ark-fake.example/videos/{job.id}.mp4",
                           "last_frame_url": f"https://ark-fake.example/frames/{job.id}.png"}
        body["usage"] = {"completion_tokens": 108900, "total_tokens": 108900}
    if status == "failed":
        body["error"] = {"code": "InternalServiceError", "message": "The video generation failed (fake)."}
    return jsonify(body)


@app.delete(f"{BASE}/<task_id>")
def cancel_task(task_id: str):
    job = book.jobs.get(task_id)
    if job is None:
        return error(404, "ResourceNotFound", f"The specified task {task_id} is not found.", "NotFound")
    if job.phase() != "queued":
        return error(400, "InvalidAction", "Only queued tasks can be cancelled.")
    job.cancelled = True
    return jsonify({})


if __name__ == "__main__":
    serve(app, 18081)
