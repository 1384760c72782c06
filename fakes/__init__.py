"""Fake providers: small Flask apps speaking the providers' real HTTP APIs (docs/design.md §7).

Run one with `python -m fakes.ark --port P` or `python -m fakes.nanobanana --port P`.

They follow /work/shared/research/providers.md: kie.ai's error codes inside HTTP 200 (401, 402, 422, 429, 455,
501, 505) and its recordInfo states and fields; Ark's error envelope, its 429 family, the 120-queued-task limit,
`expired` tasks, cancel-only-while-queued, `last_frame_url` only when asked, strict parameter validation. Prompt
markers (`[fail]`, `[credits]`, `[quota:2]`, `[slowcreate:5]`, ...) steer one job; `POST /_fake/mode` switches
the whole fake (an outage, a credit top-up, `Retry-After` on every 429 and 503); `GET /_fake/stats` counts the
jobs unfinished now and at the peak, and the cancels. A succeeded job's result URLs serve real media (an MP4, a
PNG, a JPEG) from the fake itself, expiring 24 h after the job. Settings (FAKE_STEP_SECONDS, FAKE_QUEUED_SECONDS,
FAKE_RUNNING_SECONDS, FAKE_TIMINGS=realistic, FAKE_EXPIRY_SCALE, FAKE_RETRY_AFTER, ...) and the full marker
table: fakes/common.py.
"""
