"""Fake kie.ai job API for Nano Banana 2 (createTask, recordInfo): paths, shapes, states and errors of the real one.

kie.ai answers errors inside HTTP 200 with its own `code` in the body [S9]; FAKE_KIE_HTTP_STATUS=code (or the
`http_status` switch) sends the code as the HTTP status too. Source tags point at
/work/shared/research/providers.md §5; fakes/common.py has the marker table.
"""

from __future__ import annotations

import json
import os
import time

from flask import jsonify, request

from fakes.common import DAY, MEDIA_PREFIX, api_request, create_fake_app, html_error, serve

CREATE_PATH, RECORD_PATH = "/api/v1/jobs/createTask", "/api/v1/jobs/recordInfo"
ASPECT_RATIOS = frozenset({"auto", "1:1", "1:4", "16:9", "1:8", "21:9", "2:3", "3:2", "3:4", "4:1", "4:3", "4:5",
                           "5:4", "8:1", "9:16"})  # [S6]
RESOLUTIONS, FORMATS = frozenset({"1K", "2K", "4K"}), frozenset({"jpg", "png"})  # [S6]
MAX_PROMPT, MAX_IMAGES = 20000, 14  # [S6]
RETENTION = 7 * DAY  # how long recordInfo knows a job: undocumented for kie, chosen like Ark's window
REALISTIC = {"queued_seconds": 3.0, "running_seconds": 15.0, "jitter": 0.3}  # [S7]: costTime example 15000 ms
GENERATION_FAILED = (501, "Playground task failed.")  # the failure callback's code and msg [S8]


def http_mode(value) -> str:
    value = str(value)
    if value not in ("200", "code"):
        raise ValueError("http_status must be '200' or 'code'")
    return value


def fail_code(value) -> int:
    value = int(value)
    if value not in (200, 501):
        raise ValueError("fail_code must be 200 or 501")
    return value


def status_of(job, now) -> str:
    """The kie state for the fake's phase: waiting, then queuing (half the queued time each), generating,
    success | fail [S7]."""
    phase = job.phase(now)
    if phase == "queued":
        return "waiting" if now < job.created + job.queued_seconds / 2 else "queuing"
    return {"running": "generating", "succeeded": "success", "failed": "fail"}.get(phase, "generating")


app, book = create_fake_app("fake-nanobanana", REALISTIC, {"http_status": http_mode, "fail_code": fail_code},
                            status_of)
book.set_default("http_status", http_mode(os.environ.get("FAKE_KIE_HTTP_STATUS", "200")))
book.set_default("fail_code", fail_code(os.environ.get("FAKE_KIE_FAIL_CODE", "200")))


def answer(code: int, msg: str, data=None, http: int | None = None):
    """kie's envelope {code, msg, data}. Errors go inside HTTP 200 [S9] unless the http_status switch says "code";
    `http` forces the HTTP status (a crashed server answers 500 whatever kie's habit)."""
    if http is None:
        http = 200 if code == 200 or book.mode["http_status"] == "200" else code
    return jsonify({"code": code, "msg": msg, "data": data}), http


# The code table of [S6][S7]; msgs are its descriptions (the real msgs are unconfirmed) except where the fake
# already had its own words.
ERRORS = {
    "ratelimit": lambda: answer(429, "Rate limited: too many requests"),
    "error500": lambda: answer(500, "Server error, please try again later", http=500),
    "credits": lambda: answer(402, "Insufficient Credits - Account does not have enough credits to perform the "
                                   "operation"),
    "maintenance": lambda: answer(455, "Service Unavailable - System is currently undergoing maintenance"),
    "disabled": lambda: answer(505, "Feature Disabled - The requested feature is currently disabled"),
    "error501": lambda: answer(501, "Generation Failed - Content generation task failed"),
    "invalid": lambda: answer(422, "Validation Error - The request parameters failed validation checks"),
    "down": lambda: html_error(503, "Service Temporarily Unavailable"),
}
book.errors.update(ERRORS)


@app.before_request
def check():
    if not api_request():
        return None
    if request.headers.get("Authorization") != f"Bearer {book.api_key}":
        return answer(401, "You do not have access permissions")
    if book.random_error():
        return answer(500, "Server error, please try again later", http=500)
    return None


def validate(job_input: dict):
    """The input schema of [S6]: enums and limits; a 422 Validation Error otherwise."""
    checks = [("aspect_ratio", ASPECT_RATIOS), ("resolution", RESOLUTIONS), ("output_format", FORMATS)]
    for name, allowed in checks:
        if name in job_input and job_input[name] not in allowed:
            return answer(422, f"input.{name} must be one of {', '.join(sorted(allowed))}")
    if not isinstance(job_input["prompt"], str) or len(job_input["prompt"]) > MAX_PROMPT:
        return answer(422, f"input.prompt must be a string of at most {MAX_PROMPT} characters")
    images = job_input.get("image_input", [])
    if not isinstance(images, list) or len(images) > MAX_IMAGES or not all(isinstance(u, str) for u in images):
        return answer(422, f"input.image_input must be a list of at most {MAX_IMAGES} URLs")
    return None


@app.post(CREATE_PATH)
def create_task():
    body = request.get_json(silent=True)
    job_input = body.get("input") if isinstance(body, dict) else None
    if not isinstance(job_input, dict) or not body.get("model") or not job_input.get("prompt"):
        return answer(422, "model and input.prompt are required")
    prompt = job_input["prompt"]
    refusal = book.create_error(prompt)
    if refusal:
        return book.refuse(refusal)
    if "[reject]" in prompt:  # invented (400 is not in kie's create codes [S6]); kept as it was for existing tests
        return answer(400, "Your prompt was flagged by the content policy", http=400)
    wrong = validate(job_input)
    if wrong:
        return wrong
    marks = book.markers(prompt)
    job = book.add("nb2-", prompt, body, retention=RETENTION * book.expiry_scale)
    if "expire" in marks:  # the record goes early: S s after the create, or as soon as the job has ended
        ended = job.finishes if marks["expire"] is None else job.created + book.count(marks, "expire")
        job.gone_at = ended if ended is not None else job.gone_at
    time.sleep(book.create_delay(prompt))  # a slow create: the job exists already
    return answer(200, "success", {"taskId": job.id})


def ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


@app.get(RECORD_PATH)
def record_info():
    switched = book.poll_error()
    if switched is not None:
        return switched
    task_id = request.args.get("taskId", "")
    if not task_id:
        return answer(400, "taskId parameter is required")  # [S7]
    job = book.jobs.get(task_id)
    if job is None:
        return answer(404, "Task not found")  # [S7]
    now = time.time()
    if job.gone(now):  # an old job: [S7]'s 422 example (data null); when kie answers it is unconfirmed (chosen)
        return answer(422, "recordInfo is null", None)
    state = status_of(job, now)
    # the fields of [S7]; `progress` is for sora2 only
    data = {"taskId": job.id, "model": job.body["model"], "state": state,
            "param": json.dumps(job.body), "resultJson": "", "failCode": "", "failMsg": "",
            "costTime": None, "completeTime": None, "createTime": ms(job.created),
            "updateTime": ms(job.changed_at(now))}
    if state == "success":
        ext = job.body["input"].get("output_format", "png")
        link = f"{request.host_url.rstrip('/')}{MEDIA_PREFIX}{job.id}.{ext}"  # served by fakes/common.py
        data.update(resultJson=json.dumps({"resultUrls": [link]}),
                    costTime=ms(job.running_seconds), completeTime=ms(job.finishes))
    if state == "fail":  # as in the failure callback [S8]: resultJson null, costTime 0
        data.update(resultJson=None, costTime=0, completeTime=ms(job.finishes))
        if job.kind == "genfail":
            data.update(failCode="500", failMsg="Internal server error (fake)")
            return answer(*GENERATION_FAILED, data)
        if job.kind == "moderated":  # how kie reports a blocked output is unconfirmed (§2): a plain `fail`
            data.update(failCode="500", failMsg="The output was flagged by the content policy (fake).")
        else:
            data.update(failCode="500", failMsg="Image generation failed (fake).")
        if book.mode["fail_code"] == 501:
            return answer(*GENERATION_FAILED, data)
    return answer(200, "success", data)


if __name__ == "__main__":
    serve(app, 18082)
