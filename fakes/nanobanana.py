"""Fake nano-banana-2 asynchronous job API (createTask, recordInfo), shaped like the real one."""

from __future__ import annotations

import json
import time

from flask import jsonify, request

from fakes.common import create_fake_app, serve

app, book = create_fake_app("fake-nanobanana")
STATES = {"queued": "waiting", "running": "generating", "succeeded": "success", "failed": "fail"}


def answer(code: int, msg: str, data=None):
    return jsonify({"code": code, "msg": msg, "data": data}), code


@app.before_request
def check():
    if request.path.startswith("/_fake"):
        return None
    if request.headers.get("Authorization") != f"Bearer {book.api_key}":
        return answer(401, "You do not have access permissions")
    if book.random_error():
        return answer(500, "Server error, please try again later")
    return None


@app.post("/api/v1/jobs/createTask")
def create_task():
    body = request.get_json(silent=True)
    job_input = body.get("input") if isinstance(body, dict) else None
    if not isinstance(job_input, dict) or not body.get("model") or not job_input.get("prompt"):
        return answer(422, "model and input.prompt are required")
    prompt = job_input["prompt"]
    refusal = book.create_refusal(prompt)
    if refusal == 429:
        return answer(429, "Rate limited: too many requests")
    if refusal == 500:
        return answer(500, "Server error, please try again later")
    if "[reject]" in prompt:
        return answer(400, "Your prompt was flagged by the content policy")
    job = book.add("nb2-", prompt, body)
    return answer(200, "success", {"taskId": job.id})


@app.get("/api/v1/jobs/recordInfo")
def record_info():
    job = book.jobs.get(request.args.get("taskId", ""))
    if job is None:
        return answer(404, "Task not found")
    state = STATES.get(job.phase(), "generating")
    data = {"taskId": job.id, "model": job.body["model"], "state": state,
            "param": json.dumps(job.body), "resultJson": "", "failCode": "", "failMsg": "",
            "costTime": None, "completeTime": None, "createTime": int(job.created * 1000)}
    if state == "success":
        ext = job.body["input"].get("output_format", "png")
        data.update(resultJson=json.dumps({"resultUrls": [f"https://banana-fake.example/{job.id}.{ext}"]}),
                    costTime=int(2 * job.step_seconds * 1000), completeTime=int(time.time() * 1000))
    if state == "fail":
        data.update(failCode="500", failMsg="Image generation failed (fake).", completeTime=int(time.time() * 1000))
    return answer(200, "success", data)


if __name__ == "__main__":
    serve(app, 18082)
