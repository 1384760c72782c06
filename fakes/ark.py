"""Fake Volcengine Ark content generation tasks API (paths, auth, shapes, statuses and errors of the real one).

Source tags point at /work/shared/research/providers.md §5; fakes/common.py has the marker table.
"""

from __future__ import annotations

import math
import os
import random
import re
import string
import threading
import time

from flask import jsonify, request

from fakes.common import DAY, MEDIA_PREFIX, api_request, create_fake_app, html_error, serve

BASE = "/api/v3/contents/generations/tasks"
RATIOS = frozenset({"16:9", "4:3", "1:1", "3:4", "9:16", "21:9", "adaptive"})  # [S2]
RESOLUTIONS = frozenset({"480p", "720p", "1080p"})  # [S2]
EXPIRES_DEFAULT, EXPIRES_MIN, EXPIRES_MAX = 172800, 3600, 259200  # execution_expires_after [S2]
QUERY_WINDOW = 7 * DAY  # "only the last 7 days can be queried" [S2][S3]
CANCELLED_KEPT = DAY  # a cancelled task is deleted after 24 h [S3, query page]
LATER_SERIES = re.compile(r"seedance-(?!1-0)\d")  # 1.5, 2.0, ...: anything else counts as the 1.0 series
REALISTIC = {"queued_seconds": 5.0, "running_seconds": 50.0, "jitter": 0.3}  # [S3]: created→updated 54 s


def error(status: int, code: str, message: str, kind: str = "BadRequest", param: str = ""):
    """Ark's error envelope: the HTTP status and {"error": {code, message, param, type}} [S1 _base_client.py][S4]."""
    return jsonify({"error": {"code": code, "message": message, "param": param, "type": kind}}), status


def server_error():
    return error(500, "InternalServiceError", "The service encountered an unexpected internal error.",
                 "InternalServerError")


def closed_endpoint():
    # A 400 that says "try again later" [S4]: the endpoint is closed for now, not the request wrong.
    return error(400, "InvalidEndpoint.ClosedEndpoint",
                 "The requested endpoint is temporarily unavailable. Please try again later.")


# The 429 family: [S5a] for EndpointRPMExceeded, [S5b] (secondary) for the others; messages are ours.
ERRORS = {
    "ratelimit": lambda: error(429, "RateLimitExceeded.EndpointRPMExceeded", "Request rate limit exceeded",
                               "TooManyRequests"),
    "error500": server_error,
    "credits": lambda: error(403, "AccountOverdueError",  # [S4]: Ark's answer to an account without money
                             "The request failed because your account has an overdue balance.", "Forbidden"),
    "maintenance": closed_endpoint,
    "closed": closed_endpoint,
    "quota": lambda: error(429, "QuotaExceeded",
                           "The request failed because you have exceeded the quota for this account.",
                           "TooManyRequests"),
    "setlimit": lambda: error(429, "SetLimitExceeded",
                              "The request failed because the model reached the limit you set for it "
                              "(safe experience mode); the model is paused.", "TooManyRequests"),
    "overloaded": lambda: error(429, "ServerOverloaded",
                                "The service is currently overloaded. Please try again later.", "TooManyRequests"),
    # An unknown or not activated model [S4][S5]; the message is ours.
    "nomodel": lambda: error(404, "InvalidEndpointOrModel.NotFound",
                             "The model or endpoint does not exist or you do not have access to it.", "NotFound"),
    "invalid": lambda: error(400, "InvalidParameter", "A parameter specified in the request is not valid.",
                             param="content"),
    "down": lambda: html_error(503, "Service Temporarily Unavailable"),
}


def status_of(job, now):
    return job.phase(now)


app, book = create_fake_app("fake-ark", REALISTIC, {"queue_limit": int}, status_of)
book.errors.update(ERRORS)
book.set_default("queue_limit", int(os.environ.get("FAKE_ARK_QUEUE_LIMIT", "120")))  # [S2-ja]
admitting = threading.Lock()  # the queue-limit check and the new job together
maybe_queued: set[str] = set()  # ids of jobs that were queued when last looked at (none goes back to queued)


def new_task_id() -> str:
    """`cgt-` + UTC second + 5 characters, as `cgt-20250331175019-68d9t` [S3]."""
    tail = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
    return f"cgt-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{tail}"


@app.before_request
def check():
    if not api_request():
        return None
    if request.headers.get("Authorization") != f"Bearer {book.api_key}":
        return error(401, "AuthenticationError", "The API key in the request is missing or invalid.",
                     "Unauthorized")
    if book.random_error():
        return server_error()
    return None


def invalid(param: str, message: str):
    return error(400, "InvalidParameter", f"The parameter `{param}` specified in the request is not valid: {message}",
                 param=param)


def validate(body: dict):
    """Strict validation of the top-level parameters [S2] ("New method ... strict validation")."""
    ratio = body.get("ratio")
    if ratio is not None and ratio not in RATIOS:
        return invalid("ratio", f"must be one of {', '.join(sorted(RATIOS))}")
    has_first_frame = any(isinstance(c, dict) and c.get("type") == "image_url"
                          and c.get("role", "first_frame") == "first_frame" for c in body["content"])
    if ratio == "adaptive" and not has_first_frame and not LATER_SERIES.search(str(body["model"])):
        # "adaptive is not supported ... in Text-to-Video scenarios using the Seedance 1.0 series" [S2]; refused at
        # create under strict validation (providers.md §1, §4.6); the exact code is unconfirmed: InvalidParameter.
        return invalid("ratio", "adaptive is not supported for text-to-video with this model")
    resolution = body.get("resolution")
    if resolution is not None and resolution not in RESOLUTIONS:
        return invalid("resolution", f"must be one of {', '.join(sorted(RESOLUTIONS))}")
    expires = body.get("execution_expires_after")
    if expires is not None and (isinstance(expires, bool) or not isinstance(expires, int)
                                or not EXPIRES_MIN <= expires <= EXPIRES_MAX):
        return invalid("execution_expires_after", f"must be an integer in [{EXPIRES_MIN}, {EXPIRES_MAX}]")
    if "return_last_frame" in body and not isinstance(body["return_last_frame"], bool):
        return invalid("return_last_frame", "must be a boolean")
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
    refusal = book.create_error(prompt)
    if refusal:
        return book.refuse(refusal)
    if "[reject]" in prompt:  # input moderation, at create [S4]
        return error(400, "InputTextSensitiveContentDetected",
                     "The request failed because the input text may contain sensitive information.")
    wrong = validate(body)
    if wrong:
        return wrong
    marks = book.markers(prompt)
    lifetime = (book.count(marks, "expire") if marks.get("expire") is not None
                else body.get("execution_expires_after", EXPIRES_DEFAULT) * book.expiry_scale)
    with admitting:
        now = time.time()
        with book.lock:
            maybe_queued.intersection_update(task_id for task_id in list(maybe_queued)
                                             if book.jobs[task_id].phase(now) == "queued")
        if len(maybe_queued) >= book.mode["queue_limit"]:
            # At most 120 queued tasks per main account [S2-ja]; the code for it is unconfirmed (§6), QuotaExceeded
            # is the documented 429 for "queued-task limit" [S5b].
            with book.lock:
                book.refused["queue_limit"] += 1
            return error(429, "QuotaExceeded", f"The number of queued tasks of this account has reached the limit "
                         f"({book.mode['queue_limit']}). Please try again later.", "TooManyRequests")
        job = book.add(new_task_id, prompt, body, lifetime=lifetime, retention=QUERY_WINDOW * book.expiry_scale,
                       hang="expire" in marks)  # [expire]: it never finishes, so it ends `expired`
        maybe_queued.add(job.id)
    time.sleep(book.create_delay(prompt))  # a slow create: the task exists already
    return jsonify({"id": job.id})


def family(model: str) -> str:
    """`doubao-seedance-1-0-pro-250528` -> `doubao-seedance-1-0-pro`, the first path segment of [S3]'s video_url."""
    return re.sub(r"-\d{6}$", "", model) or "model"


def default_resolution(model: str) -> str:
    return "1080p" if re.search(r"seedance-1-0-pro", model) else "720p"  # [S2][S3]


@app.get(f"{BASE}/<task_id>")
def get_task(task_id: str):
    switched = book.poll_error()
    if switched is not None:
        return switched
    job = book.find(task_id)
    if job is None:  # unknown, deleted, or older than the 7-day window; the real code is unconfirmed (§6)
        return error(404, "ResourceNotFound", f"The specified task {task_id} is not found.", "NotFound")
    now = time.time()
    status = job.phase(now)
    asked, model = job.body, str(job.body["model"])
    first_frame = any(isinstance(c, dict) and c.get("type") == "image_url" for c in asked["content"])
    if "seed" not in job.extra:
        seed = asked.get("seed", -1)
        job.extra["seed"] = random.randint(0, 2**32 - 1) if seed in (-1, None) else seed  # the seed used [S3]
    body = {"id": job.id, "model": model, "status": status, "error": None,  # null unless failed [S3]
            "created_at": int(job.created), "updated_at": int(job.changed_at(now)),
            "seed": job.extra["seed"], "resolution": asked.get("resolution", default_resolution(model)),
            "ratio": asked.get("ratio", "adaptive" if first_frame else "16:9"),  # defaults [S2]
            "framespersecond": 24, "service_tier": asked.get("service_tier", "default"),
            "execution_expires_after": asked.get("execution_expires_after", EXPIRES_DEFAULT)}
    if "frames" in asked:  # duration or frames, whichever was asked [S3]
        body["frames"] = asked["frames"]
    else:
        body["duration"] = asked.get("duration", 5)
    if status == "succeeded":
        folder = f"{request.host_url.rstrip('/')}{MEDIA_PREFIX}{family(model)}"  # served by fakes/common.py
        body["content"] = {"video_url": f"{folder}/{job.id}.mp4"}
        if asked.get("return_last_frame") is True:  # only then [S2 retrieve page][S3]
            body["content"]["last_frame_url"] = f"{folder}/{job.id}-last-frame.png"
        body["usage"] = {"completion_tokens": 108900, "total_tokens": 108900}  # total = completion [S1][S3]
    if status == "failed":
        if job.kind == "moderated":  # the code exists [S5b]; arriving as a task's error is unconfirmed (§1)
            body["error"] = {"code": "OutputVideoSensitiveContentDetected",
                             "message": "The request failed because the output video may contain sensitive "
                                        "information."}
        else:
            body["error"] = {"code": "InternalServiceError", "message": "The video generation failed (fake)."}
    return jsonify(body)


@app.delete(f"{BASE}/<task_id>")
def cancel_task(task_id: str):
    """queued -> cancelled; succeeded, failed or expired -> the record is deleted; running or cancelled -> not
    allowed [S2]. "No response parameters" [S2]: `{}`."""
    job = book.find(task_id)
    if job is None:
        return error(404, "ResourceNotFound", f"The specified task {task_id} is not found.", "NotFound")
    with book.lock:  # two DELETEs at once cancel it once
        now = time.time()
        status = job.phase(now)
        if status == "queued":  # the record of a cancelled task is deleted 24 h later [S3]
            job.cancelled_at = now
            job.gone_at = min(job.gone_at or math.inf, now + CANCELLED_KEPT * book.expiry_scale)
            book.cancelled += 1
            return jsonify({})
        if status in ("succeeded", "failed", "expired"):  # a finished task's record is deleted [S2]
            job.gone_at = now
            return jsonify({})
    # running or cancelled: "not allowed" [S2]; the error code is unconfirmed (§6), InvalidAction chosen.
    return error(400, "InvalidAction", f"Only queued tasks can be cancelled; task {task_id} is {status}.")


if __name__ == "__main__":
    serve(app, 18081)
