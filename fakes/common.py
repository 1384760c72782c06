"""What both fakes share: jobs stepped through their statuses over time, behaviour markers, switches, a request log.

Source tags ([S2], [S6], ...) point at /work/shared/research/providers.md §5; what they do not confirm is
marked "chosen" below and in the fake that does it.

Markers in the prompt steer one request or job. Create errors: `[name]` refuses every create of the prompt,
`[name:N]` only its first N creates (later ones go through). Job outcomes: `[name]` every job of the prompt,
`[namefirst:N]` its first N jobs.

    marker            Ark (fakes/ark.py)                         kie.ai (fakes/nanobanana.py)
    [reject]          400 InputTextSensitiveContentDetected      HTTP 400, code 400 "content policy" (invented,
                      (input moderation at create) [S4]          kept as it was: kie documents no such code)
    [fail]            job `failed`, InternalServiceError         job `fail`, recordInfo code FAKE_KIE_FAIL_CODE
    [failfirst:N]     the first N jobs of the prompt fail, later ones succeed
    [hang]            job never finishes: `expired` at its       job never finishes
                      execution_expires_after [S2] (48 h x
                      FAKE_EXPIRY_SCALE by default)
    [hangfirst:N]     the first N jobs of the prompt hang, later ones finish
    [slow:S]          the job takes S seconds per status step (queued S, running S)
    [ratelimit:N]     429 RateLimitExceeded.EndpointRPMExceeded  code 429 Rate Limited [S6]
                      [S5a]
    [error500:N]      500 InternalServiceError [S4]              HTTP 500, code 500 [S7]
      ([ratelimit] and [error500] without N refuse the first create only, as they always did)
    [credits]         403 AccountOverdueError [S4]               code 402 Insufficient Credits [S6]
    [maintenance]     400 InvalidEndpoint.ClosedEndpoint [S4]    code 455 Service Unavailable [S6]
    [closed]          400 InvalidEndpoint.ClosedEndpoint [S4]    -
    [quota]           429 QuotaExceeded [S5b]                    -
    [setlimit]        429 SetLimitExceeded [S5b]                 -
    [nomodel]         404 InvalidEndpointOrModel.NotFound        -
                      (model unknown or not activated) [S4][S5]
    [overloaded]      429 ServerOverloaded [S5b]                 -
    [disabled]        -                                          code 505 Feature Disabled [S6]
    [error501]        -                                          code 501 Generation Failed at create [S6]
    [invalid]         400 InvalidParameter [S4]                  code 422 Validation Error [S6]
    [down]            HTTP 503, an HTML page (a gateway in front of a dead service; chosen)
    [moderated]       job `failed`, OutputVideoSensitive-        job `fail`, failMsg about the content policy
    [moderatedfirst:N]  ContentDetected [S5b] (unconfirmed         (how kie reports it is unconfirmed, §2)
                        as a task error: chosen)
    [genfail]         like [fail]                                job `fail` and recordInfo body code 501,
    [genfailfirst:N]                                               msg, failCode "500" as in [S8] (chosen)
    [expire]          never finishes; `expired` at its           recordInfo answers code 422 "recordInfo is
                      execution_expires_after x FAKE_EXPIRY_       null" [S7] once the job has ended, as for an
                      SCALE [S2]                                 old job (chosen)
    [expire:S]        never finishes; `expired` S s after        the job runs as usual; its record is gone
                      the create                                 S s after the create
    [slowcreate:S]    the create answers after S seconds; the job exists from the start, so a client that
                      times out and retries makes a second job (both POSTs are in /_fake/requests)
A marker the fake has no answer for ("-") is ignored. kie.ai's codes come inside HTTP 200 ("returns HTTP 200
even for errors" [S9]; FAKE_KIE_HTTP_STATUS=code changes that), except the fake's HTTP 500 (a crashed server),
the invented HTTP 400 of [reject] and the HTML 503 of [down].

Settings (environment):
    FAKE_API_KEY          the key a request must bear (default "fake-key")
    FAKE_STEP_SECONDS     default length of each status step (default 1.0): a job is queued one step, running one
    FAKE_QUEUED_SECONDS   time a job spends queued (kie: waiting, then queuing), default FAKE_STEP_SECONDS
    FAKE_RUNNING_SECONDS  time a job spends running (kie: generating), default FAKE_STEP_SECONDS
    FAKE_JITTER           each job's times are scaled by a random factor in [1-J, 1+J] (default 0)
    FAKE_TIMINGS          "realistic": each fake's own realistic times instead of FAKE_STEP_SECONDS (Ark queued
                          5 s, running 50 s: [S3]'s example task took 54 s; kie 3 s + 15 s: [S7]'s costTime
                          example is 15000 ms; jitter 0.3); FAKE_QUEUED/RUNNING_SECONDS still win
    FAKE_CREATE_SECONDS   every create answers this late (default 0), as [slowcreate:S] does
    FAKE_EXPIRY_SCALE     multiplies every documented lifetime (default 1): Ark's execution_expires_after (48 h
                          default) and its 7-day query window [S2], 24 h for a cancelled Ark task [S3], kie's
                          record retention (7 days, chosen)
    FAKE_ERROR_RATE       share of all calls answered 500 (default 0)
    FAKE_FAIL_RATE        share of jobs that fail (default 0)
    FAKE_ARK_QUEUE_LIMIT  Ark: queued tasks an account may have (default 120 [S2-ja]); one more is 429 QuotaExceeded
    FAKE_KIE_HTTP_STATUS  kie: "200" (default) sends error codes inside HTTP 200 [S9]; "code" sends them as the
                          HTTP status as well (the old behaviour)
    FAKE_KIE_FAIL_CODE    kie: body code of recordInfo for a job failed by [fail], [failfirst:N], [moderated] or
                          FAKE_FAIL_RATE: 200 (default, as before) or 501 (the form of [S8]'s failure callback)
    FAKE_RETRY_AFTER      adds `Retry-After: <value>` to every 429 and 503 answer (HTTP status, or kie's body
                          code inside HTTP 200); unset (default): none. Whether the real APIs send it is
                          unconfirmed (chosen); the value goes as given (seconds, an HTTP-date, or garbage)

Media: a succeeded job's result URLs point at this fake, `GET /media/.../<job id>[-last-frame].<ext>`, and
are served without a key (like the real signed links) and never logged as API requests: a real MP4 (ship-
ped, fakes/media/video.mp4, 96x64, 1 s), a PNG made here, a JPEG (fakes/media/image.jpg). Each link dies 24 h
(x FAKE_EXPIRY_SCALE) after its job finished, answering 403 as an expired signed link does ([S2][S7]).

Test endpoints (never logged as requests):
    GET  /_fake/requests  every API request seen since the last reset (method, path, query, headers, json, at)
    POST /_fake/reset     forget the requests, the per-prompt counters and the refusal counts; start a new
                          stats window; put every switch back to its setting (jobs are kept)
    GET  /_fake/health    {"ok": true, "jobs": n}
    GET  /_fake/stats     about the jobs created since the last reset: "created"; "queued", "running" and
                          "unfinished" (queued + running) now; "peak_unfinished" and "peak_running", the most at
                          any one moment; "by_status" (the provider's words); "refused": creates refused, by
                          error name ("queue_limit" for Ark's queue limit); "cancelled": jobs cancelled since
                          the reset (Ark's DELETE of a queued task)
    GET  /_fake/mode      the switches now
    POST /_fake/mode      change switches until changed back (or reset), e.g.
                          {"create": "credits"} every create answers that error (any create-error name above
                          the fake has, or "ok"; it does not use up a prompt's [name:N]); {"poll": "down"} the
                          same for every status query; "queued_seconds",
                          "running_seconds", "jitter", "create_seconds"; "retry_after" (as FAKE_RETRY_AFTER;
                          null: none); Ark: "queue_limit"; kie: "http_status" ("200"|"code"), "fail_code" (200|501)
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import struct
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request

OUTCOME_MARKERS = ("reject", "fail", "failfirst", "hang", "hangfirst", "slow", "moderated", "moderatedfirst",
                   "genfail", "genfailfirst", "expire", "slowcreate")
# Create errors, in the order they are tried: the first whose count is not used up answers.
CREATE_ERRORS = ("ratelimit", "error500", "credits", "maintenance", "closed", "quota", "setlimit", "overloaded",
                 "nomodel", "disabled", "error501", "invalid", "down")
ONCE_WHEN_BARE = frozenset({"ratelimit", "error500"})  # `[ratelimit]` meant `[ratelimit:1]` before; it still does
MARKER = re.compile(r"\[(" + "|".join(sorted(OUTCOME_MARKERS + CREATE_ERRORS, key=len, reverse=True))
                    + r")(?::([\d.]+))?\]")
FINAL = frozenset({"succeeded", "failed", "cancelled", "expired"})
DAY = 86400.0
MEDIA_PREFIX = "/media/"  # result links: public, not API calls
MEDIA_LIFETIME = DAY  # "deleted after 24 hours" [S2]; "typically expire after 24 hours" [S7]
SHIPPED = Path(__file__).with_name("media")


def png(width: int = 64, height: int = 48) -> bytes:
    """A real PNG (an RGB gradient), made with zlib: no image library needed."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes(v for x in range(width) for v in (x * 255 // width, y * 255 // height, 160))
                    for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9))
            + chunk(b"IEND", b""))


MEDIA = {"mp4": ("video/mp4", (SHIPPED / "video.mp4").read_bytes()), "png": ("image/png", png()),
         "jpg": ("image/jpeg", (SHIPPED / "image.jpg").read_bytes())}


def api_request() -> bool:
    """A provider API call (logged, key checked): not a test endpoint, not a media link."""
    return not request.path.startswith(("/_fake", MEDIA_PREFIX))
RETRY_AFTER_STATUSES = frozenset({429, 503})  # the answers FAKE_RETRY_AFTER puts Retry-After on


def retry_after_value(value: Any) -> str | None:
    """The `retry_after` switch: None (or "") for none; a number as seconds; any other string as it is."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("retry_after must be a number of seconds, a string or null")
    if isinstance(value, (int, float)):
        return str(int(value)) if float(value).is_integer() else str(value)
    return str(value)


@dataclass
class Job:
    """One provider job. Its status is worked out from its times whenever it is asked for."""

    id: str
    prompt: str
    body: dict
    created: float
    queued_seconds: float
    running_seconds: float
    fails: bool
    hangs: bool
    kind: str = ""  # how it fails: "" (plain), "moderated", "genfail"
    expires_at: float | None = None  # Ark: `expired` at this time unless it finished before
    gone_at: float | None = None  # its record can no longer be read from this time on
    cancelled_at: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def started(self) -> float:
        return self.created + self.queued_seconds

    @property
    def finishes(self) -> float | None:
        """When it ends by itself (succeeded or failed); None if it never does."""
        return None if self.hangs else self.started + self.running_seconds

    @property
    def ends(self) -> float:
        """When it stops being unfinished, whatever the reason (math.inf: not foreseeable)."""
        candidates = [t for t in (self.finishes, self.expires_at, self.cancelled_at) if t is not None]
        return min(candidates) if candidates else math.inf

    def phase(self, now: float | None = None) -> str:
        """queued -> running -> succeeded | failed | expired; `cancelled` if cancelled while queued."""
        now = time.time() if now is None else now
        if self.cancelled_at is not None and now >= self.cancelled_at:
            return "cancelled"
        finishes = self.finishes
        if self.expires_at is not None and now >= self.expires_at and (finishes is None or finishes > self.expires_at):
            return "expired"
        if now < self.started:
            return "queued"
        if finishes is None or now < finishes:
            return "running"
        return "failed" if self.fails else "succeeded"

    def changed_at(self, now: float | None = None) -> float:
        """When its status last changed."""
        now = time.time() if now is None else now
        return max([t for t in (self.created, self.started, self.ends) if t <= now], default=self.created)

    def gone(self, now: float | None = None) -> bool:
        return self.gone_at is not None and (time.time() if now is None else now) >= self.gone_at


def peak(intervals: list[tuple[float, float]]) -> int:
    """The most intervals [start, end) covering one moment."""
    events = sorted([(end, -1) for start, end in intervals if end > start]
                    + [(start, 1) for start, end in intervals if end > start])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def html_error(status: int, text: str) -> Response:
    """What a gateway answers in front of a dead service: HTML, not the provider's JSON."""
    return Response(f"<html><head><title>{status} {text}</title></head><body><center><h1>{status} {text}</h1>"
                    "</center></body></html>", status=status, mimetype="text/html")


class Book:
    """The fake's state: jobs, per-prompt counters, switches, the request log."""

    def __init__(self, realistic: dict[str, float] | None = None, adjustable: dict[str, Callable] | None = None):
        self.lock = threading.Lock()
        self.jobs: dict[str, Job] = {}
        self.counts: Counter = Counter()
        self.refused: Counter = Counter()
        self.cancelled = 0  # jobs cancelled since the reset
        self.requests: list[dict] = []
        self.since = time.time()
        self.api_key = os.environ.get("FAKE_API_KEY", "fake-key")
        self.step_seconds = float(os.environ.get("FAKE_STEP_SECONDS", "1.0"))
        self.error_rate = float(os.environ.get("FAKE_ERROR_RATE", "0"))
        self.fail_rate = float(os.environ.get("FAKE_FAIL_RATE", "0"))
        self.expiry_scale = float(os.environ.get("FAKE_EXPIRY_SCALE", "1"))
        timings = dict(realistic or {}) if os.environ.get("FAKE_TIMINGS", "") == "realistic" else {}
        self.defaults: dict[str, Any] = {
            "create": "ok", "poll": "ok",
            "queued_seconds": float(os.environ.get("FAKE_QUEUED_SECONDS",
                                                   timings.get("queued_seconds", self.step_seconds))),
            "running_seconds": float(os.environ.get("FAKE_RUNNING_SECONDS",
                                                    timings.get("running_seconds", self.step_seconds))),
            "jitter": float(os.environ.get("FAKE_JITTER", timings.get("jitter", 0))),
            "create_seconds": float(os.environ.get("FAKE_CREATE_SECONDS", "0")),
            "retry_after": retry_after_value(os.environ.get("FAKE_RETRY_AFTER")),
        }
        self.adjustable: dict[str, Callable] = {"queued_seconds": float, "running_seconds": float,
                                                "jitter": float, "create_seconds": float,
                                                "retry_after": retry_after_value, **(adjustable or {})}
        self.errors: dict[str, Callable[[], Any]] = {}  # create-error name -> its answer; set by the fake
        self.mode: dict[str, Any] = {}

    def set_default(self, key: str, value: Any) -> None:
        """A fake's own switch, with its starting value (from its setting)."""
        self.defaults[key] = value
        self.mode.setdefault(key, value)

    def reset_mode(self) -> None:
        self.mode = dict(self.defaults)

    @staticmethod
    def markers(prompt: str) -> dict[str, float | None]:
        """name -> the number after the colon, or None for a bare marker."""
        return {name: float(value) if value else None for name, value in MARKER.findall(prompt or "")}

    @staticmethod
    def count(marks: dict[str, float | None], name: str, bare: float = 1.0) -> float:
        """A marker's number: 0 if absent, `bare` if it has none."""
        if name not in marks:
            return 0.0
        value = marks[name]
        return bare if value is None else value

    # -- creates --
    def create_error(self, prompt: str) -> str | None:
        """The name of the error this create answers (the `create` switch, then the prompt's markers); None to go
        ahead. Creates refused by the switch do not use up a prompt's `[name:N]`."""
        switched = self.mode.get("create", "ok")
        if switched != "ok":
            with self.lock:
                self.refused[switched] += 1
            return switched
        marks = self.markers(prompt)
        with self.lock:
            self.counts[("create", prompt)] += 1
            seen = self.counts[("create", prompt)]
        for name in CREATE_ERRORS:
            if name in marks and name in self.errors:
                limit = self.count(marks, name, bare=1.0 if name in ONCE_WHEN_BARE else math.inf)
                if seen <= limit:
                    with self.lock:
                        self.refused[name] += 1
                    return name
        return None

    def refuse(self, name: str):
        """The answer of create error `name`."""
        return self.errors[name]()

    def poll_error(self):
        """The `poll` switch's answer for a status query, or None to answer normally."""
        switched = self.mode.get("poll", "ok")
        return None if switched == "ok" else self.errors[switched]()

    def create_delay(self, prompt: str) -> float:
        marks = self.markers(prompt)
        return self.count(marks, "slowcreate", bare=1.0) if "slowcreate" in marks else self.mode["create_seconds"]

    def add(self, prefix: str | Callable[[], str], prompt: str, body: dict, lifetime: float | None = None,
            retention: float | None = None, hang: bool = False) -> Job:
        """A new job for `prompt`. `lifetime`: seconds until it expires if unfinished (Ark); `retention`: seconds
        until its record is gone; `hang`: it never finishes by itself, whatever the markers say."""
        marks = self.markers(prompt)
        with self.lock:
            self.counts[("job", prompt)] += 1
            nth = self.counts[("job", prompt)]

        def chosen(name: str) -> bool:
            return name in marks or nth <= self.count(marks, f"{name}first")

        kind = "moderated" if chosen("moderated") else "genfail" if chosen("genfail") else ""
        fails = bool(kind) or chosen("fail") or (self.fail_rate > 0 and random.random() < self.fail_rate)
        hangs = hang or chosen("hang")
        if "slow" in marks:
            queued = running = self.count(marks, "slow")
        else:
            jitter = float(self.mode["jitter"])
            queued = self.mode["queued_seconds"] * random.uniform(1 - jitter, 1 + jitter)
            running = self.mode["running_seconds"] * random.uniform(1 - jitter, 1 + jitter)
        now = time.time()
        while True:
            job_id = prefix() if callable(prefix) else f"{prefix}{uuid.uuid4().hex[:20]}"
            job = Job(job_id, prompt, body, now, queued, running, fails, hangs, kind)
            if lifetime is not None:
                job.expires_at = now + lifetime
            if retention is not None:
                job.gone_at = now + retention
            with self.lock:
                if job.id not in self.jobs:
                    self.jobs[job.id] = job
                    return job

    def find(self, job_id: str) -> Job | None:
        """The job, if its record can still be read."""
        job = self.jobs.get(job_id)
        return None if job is None or job.gone() else job

    def random_error(self) -> bool:
        return self.error_rate > 0 and random.random() < self.error_rate

    # -- what tests look at --
    def stats(self, status_of: Callable[[Job, float], str]) -> dict[str, Any]:
        now = time.time()
        with self.lock:
            jobs = list(self.jobs.values())
            refused = dict(self.refused)
            cancelled = self.cancelled
            since = self.since
        jobs = [job for job in jobs if job.created >= since]
        phases = Counter(job.phase(now) for job in jobs)
        unfinished = [(job.created, min(job.ends, now)) for job in jobs]
        running = [(job.started, min(job.ends, now)) for job in jobs]
        return {
            "created": len(jobs),
            "queued": phases["queued"], "running": phases["running"],
            "unfinished": phases["queued"] + phases["running"],
            "peak_unfinished": peak(unfinished), "peak_running": peak(running),
            "refused": refused,
            "cancelled": cancelled,
            "by_status": dict(Counter(status_of(job, now) for job in jobs)),
            "since": since,
        }


def create_fake_app(name: str, realistic: dict[str, float] | None = None,
                    adjustable: dict[str, Callable] | None = None,
                    status_of: Callable[[Job, float], str] | None = None) -> tuple[Flask, Book]:
    """A Flask app with the request log and test endpoints every fake has."""
    app = Flask(name)
    book = Book(realistic, adjustable)
    book.reset_mode()
    status_of = status_of or (lambda job, now: job.phase(now))

    @app.before_request
    def record():
        if not api_request():
            return None
        with book.lock:
            book.requests.append({"method": request.method, "path": request.path,
                                  "query": request.args.to_dict(),
                                  "headers": {k: v for k, v in request.headers.items()
                                              if k in ("Authorization", "Content-Type")},
                                  "json": request.get_json(silent=True), "at": time.time()})
        return None

    @app.after_request
    def add_retry_after(response: Response) -> Response:
        """FAKE_RETRY_AFTER: Retry-After on every 429 and 503, whether HTTP status or kie's body code."""
        value = book.mode.get("retry_after")
        if value is None or request.path.startswith("/_fake"):
            return response
        body = response.get_json(silent=True) if response.is_json else None
        code = body.get("code") if isinstance(body, dict) else None
        if response.status_code in RETRY_AFTER_STATUSES or code in RETRY_AFTER_STATUSES:
            response.headers["Retry-After"] = value
        return response

    @app.get(MEDIA_PREFIX + "<path:where>")
    def media(where: str):
        """A result link: the job is named by the file (`<job id>.<ext>` or `<job id>-last-frame.<ext>`)."""
        stem, _, ext = where.rpartition("/")[2].rpartition(".")
        job = book.jobs.get(stem.removesuffix("-last-frame"))
        if ext not in MEDIA or job is None or job.phase() != "succeeded":
            return Response("NoSuchKey", status=404, mimetype="text/plain")
        if time.time() >= (job.finishes or 0) + MEDIA_LIFETIME * book.expiry_scale:
            return Response("AccessDenied: Request has expired", status=403, mimetype="text/plain")
        kind, data = MEDIA[ext]
        return Response(data, mimetype=kind)

    @app.get("/_fake/requests")
    def requests_seen():
        with book.lock:
            return jsonify(book.requests)

    @app.post("/_fake/reset")
    def reset():
        with book.lock:
            book.requests.clear()
            book.counts.clear()
            book.refused.clear()
            book.cancelled = 0
            book.since = time.time()
        book.reset_mode()
        return jsonify({"ok": True})

    @app.get("/_fake/health")
    def health():
        return jsonify({"ok": True, "jobs": len(book.jobs)})

    @app.get("/_fake/stats")
    def stats():
        return jsonify(book.stats(status_of))

    @app.get("/_fake/mode")
    def mode_now():
        return jsonify({**book.mode, "errors": sorted(book.errors)})

    @app.post("/_fake/mode")
    def set_mode():
        asked = request.get_json(silent=True)
        if not isinstance(asked, dict):
            return jsonify({"error": "send a JSON object"}), 400
        changes = {}
        for key, value in asked.items():
            if key in ("create", "poll"):
                if value != "ok" and value not in book.errors:
                    return jsonify({"error": f"{key} must be 'ok' or one of {sorted(book.errors)}"}), 400
                changes[key] = value
            elif key in book.adjustable:
                try:
                    changes[key] = book.adjustable[key](value)
                except (TypeError, ValueError) as exc:
                    return jsonify({"error": f"{key}: {exc}"}), 400
            else:
                return jsonify({"error": f"unknown switch {key!r}; known: create, poll, "
                                         f"{', '.join(sorted(book.adjustable))}"}), 400
        book.mode.update(changes)
        return jsonify({**book.mode, "errors": sorted(book.errors)})

    return app, book


def serve(app: Flask, default_port: int) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", default_port)))
    args = parser.parse_args()
    from werkzeug.serving import run_simple

    run_simple(args.host, args.port, app, threaded=True)
