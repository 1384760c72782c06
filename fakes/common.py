"""What both fakes share: jobs stepped through their statuses over time, behaviour markers, a request log.

Markers in the prompt steer one request:
    [reject]        create is refused (400/422, a blocked prompt)
    [fail]          the job ends failed
    [failfirst:N]   the first N jobs with this prompt fail, later ones succeed
    [hang]          the job never finishes
    [hangfirst:N]   the first N jobs with this prompt never finish, later ones do
    [slow:S]        the job takes S seconds per step instead of FAKE_STEP_SECONDS
    [ratelimit:N]   the first N creates with this prompt answer 429
    [error500:N]    the first N creates with this prompt answer 500
Settings (environment): FAKE_API_KEY (required key, default "fake-key"),
FAKE_STEP_SECONDS (default 1.0; a job takes two steps), FAKE_ERROR_RATE
(share of all calls answered 500, default 0), FAKE_FAIL_RATE (share of jobs
that fail, default 0).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

from flask import Flask, jsonify, request

MARKER = re.compile(r"\[(reject|fail|hang|failfirst|hangfirst|slow|ratelimit|error500)(?::([\d.]+))?\]")


@dataclass
class Job:
    id: str
    prompt: str
    body: dict
    created: float
    step_seconds: float
    fails: bool
    hangs: bool
    cancelled: bool = False
    extra: dict = field(default_factory=dict)

    def phase(self, now: float | None = None) -> str:
        """queued -> running -> succeeded | failed, one step each; `cancelled` if cancelled while queued."""
        if self.cancelled:
            return "cancelled"
        steps = ((now or time.time()) - self.created) / self.step_seconds
        if steps < 1:
            return "queued"
        if steps < 2 or self.hangs:
            return "running"
        return "failed" if self.fails else "succeeded"


class Book:
    """The fake's state: jobs, per-prompt counters, the request log."""

    def __init__(self):
        self.lock = threading.Lock()
        self.jobs: dict[str, Job] = {}
        self.counts: Counter = Counter()
        self.requests: list[dict] = []
        self.step_seconds = float(os.environ.get("FAKE_STEP_SECONDS", "1.0"))
        self.error_rate = float(os.environ.get("FAKE_ERROR_RATE", "0"))
        self.fail_rate = float(os.environ.get("FAKE_FAIL_RATE", "0"))
        self.api_key = os.environ.get("FAKE_API_KEY", "fake-key")

    def markers(self, prompt: str) -> dict[str, float]:
        return {name: float(value or 1) for name, value in MARKER.findall(prompt or "")}

    def create_refusal(self, prompt: str) -> int | None:
        """429/500 for the first N creates of a prompt that asks for it; None to go ahead."""
        marks = self.markers(prompt)
        with self.lock:
            self.counts[("create", prompt)] += 1
            seen = self.counts[("create", prompt)]
        if seen <= marks.get("ratelimit", 0):
            return 429
        if seen <= marks.get("error500", 0):
            return 500
        return None

    def add(self, prefix: str, prompt: str, body: dict) -> Job:
        marks = self.markers(prompt)
        with self.lock:
            self.counts[("job", prompt)] += 1
            nth = self.counts[("job", prompt)]
        fails = "fail" in marks or nth <= marks.get("failfirst", 0) or random.random() < self.fail_rate
        job = Job(f"{prefix}{uuid.uuid4().hex[:20]}", prompt, body, time.time(),
                  marks.get("slow", self.step_seconds), fails, "hang" in marks or nth <= marks.get("hangfirst", 0))
        with self.lock:
            self.jobs[job.id] = job
        return job

    def random_error(self) -> bool:
        return self.error_rate > 0 and random.random() < self.error_rate


def create_fake_app(name: str) -> tuple[Flask, Book]:
    """A Flask app with the request log and test endpoints every fake has."""
    app = Flask(name)
    book = Book()

    @app.before_request
    def record():
        if request.path.startswith("/_fake"):
            return None
        with book.lock:
            book.requests.append({"method": request.method, "path": request.path,
                                  "query": request.args.to_dict(),
                                  "headers": {k: v for k, v in request.headers.items()
                                              if k in ("Authorization", "Content-Type")},
                                  "json": request.get_json(silent=True)})
        return None

    @app.get("/_fake/requests")
    def requests_seen():
        with book.lock:
            return jsonify(book.requests)

    @app.post("/_fake/reset")
    def reset():
        with book.lock:
            book.requests.clear()
            book.counts.clear()
        return jsonify({"ok": True})

    @app.get("/_fake/health")
    def health():
        return jsonify({"ok": True, "jobs": len(book.jobs)})

    return app, book


def serve(app: Flask, default_port: int) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", default_port)))
    args = parser.parse_args()
    from werkzeug.serving import run_simple

    run_simple(args.host, args.port, app, threaded=True)
