"""What a user is told about a failed task: one clean sentence, never our internal detail.

A task's stored `error` is the full story for operators (the CLI, the dashboard,
the logs): URLs, exception names, workflow ids, the provider's codes. Users get
`public_error(stored, will_retry)`, which reads only what our own code put there
on purpose, so the contract is here, in one place, and
tests/test_public_errors.py pins it:

- every failure our code reports starts with one of the prefixes below (the
  polling workflows, the processor, the reconciler; the stuck sweep's text in
  web/task_store.py is recognised by its pattern, STUCK);
- the provider clients put PROVIDER_MESSAGE before the provider's own words when
  those words are meant for whoever sent the request (a refused request,
  USER_FACING_STATUSES; a failed job). Only words after that marker, in a text of
  a kind that may carry them (REJECTED, JOB_FAILED), are ever shown.

Everything else is internal: "The provider is unavailable; retrying" while the
task will run again, otherwise "The task failed: <short generic reason>".

Imported by the web process and the worker (and the workflow sandbox): pure, stdlib only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# -- what our code writes (the stored text) --

REJECTED = "Provider rejected the request: "  # workflows.py: the create was refused; final
CREATE_FAILED = "Provider task could not be created: "  # workflows.py: the create's retries ran out
JOB_FAILED = "Provider job failed: "  # workflows.py: the provider's job ended failed
JOB_TIMED_OUT = "Provider job timed out: "  # workflows.py: followed by the job id and DEADLINE
POLL_FAILED = "Provider job could not be polled: "  # workflows.py: a poll was refused
START_FAILED = "Workflow start failed: "  # processor.py
WORKFLOW_GONE = "Workflow gone: "  # reconciler.py: the run is closed or not found
STUCK = re.compile(r"Attempt \d+ of \d+ made no progress\b")  # web/task_store.py's stuck sweep (its own text)
DEADLINE = "did not finish within the deadline of {seconds:g}s"  # after JOB_TIMED_OUT and the job id
_DEADLINE = re.compile(r"did not finish within the deadline of (\d+(?:\.\d+)?)s")

PROVIDER_MESSAGE = "; provider message: "  # the clients: what follows is the provider's own words, for users
# Provider statuses whose message is about the request itself. Others (401, 402, 403, 404 ...) are about our
# account or setup: their message stays in the stored text, for operators only.
USER_FACING_STATUSES = frozenset({400, 422})

# -- what users see --

UNAVAILABLE_RETRYING = "The provider is unavailable; retrying"
TASK_FAILED = "The task failed"
RETRYING = "; retrying"
MAX_PROVIDER_WORDS = 300
_UNSEEN = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


@dataclass(frozen=True)
class Kind:
    """One kind of stored error: how it is recognised and what users are told."""

    name: str
    prefix: str | None  # None: recognised otherwise (STUCK), or not at all (unknown)
    reason: str  # the short generic reason of a final failure
    provider_words: bool = False  # may show the provider's own words (after PROVIDER_MESSAGE)


KINDS = (
    Kind("rejected", REJECTED, "the provider refused the request", provider_words=True),
    Kind("job_failed", JOB_FAILED, "the provider's job failed", provider_words=True),
    Kind("create_failed", CREATE_FAILED, "the provider was unavailable"),
    Kind("timed_out", JOB_TIMED_OUT, "the provider did not finish in time"),
    Kind("poll_failed", POLL_FAILED, "the provider was unavailable"),
    Kind("start_failed", START_FAILED, "it could not be started"),
    Kind("workflow_gone", WORKFLOW_GONE, "it was interrupted"),
)
STUCK_KIND = Kind("stuck", None, "it could not be started")
UNKNOWN = Kind("unknown", None, "an internal error")


def kind_of(stored: str) -> Kind:
    """Which of our own texts `stored` is; UNKNOWN for anything else (an old text, an operator's reason)."""
    for kind in KINDS:
        if stored.startswith(kind.prefix):
            return kind
    return STUCK_KIND if STUCK.match(stored) else UNKNOWN


def provider_words(stored: str) -> str | None:
    """The provider's own words in a stored text of a kind that may show them, cleaned; None if there are none."""
    kind = kind_of(stored)
    if not kind.provider_words or PROVIDER_MESSAGE not in stored:
        return None
    words = " ".join(_UNSEEN.sub(" ", stored.split(PROVIDER_MESSAGE, 1)[1]).split())
    if len(words) > MAX_PROVIDER_WORDS:
        words = words[:MAX_PROVIDER_WORDS - 1].rstrip() + "…"
    return words or None


def public_error(stored: str | None, will_retry: bool) -> str | None:
    """The error users see for a task's (or an event's) stored `error`.

    `will_retry`: the task will run again (failed, retryable, attempts left), or,
    for an event, it did. None stays None.
    """
    if stored is None:
        return None
    kind = kind_of(stored)
    words = provider_words(stored)
    if words is not None:  # the provider's own message: shown as it is
        lead = kind.prefix.rstrip(": ")
        return f"{lead}: {words.rstrip(' .')}{RETRYING}" if will_retry else f"{lead}: {words}"
    if kind.name == "timed_out" and (deadline := _DEADLINE.search(stored)):
        late = f"the provider did not finish within the deadline of {deadline.group(1)}s"
        return f"{late[0].upper()}{late[1:]}{RETRYING}" if will_retry else f"{TASK_FAILED}: {late}"
    return UNAVAILABLE_RETRYING if will_retry else f"{TASK_FAILED}: {kind.reason}"


def provider_says(words: str | None, status: int | None = None) -> str:
    """The marker and the provider's `words`, for a client's error message; "" if they are not for users.

    `status`: for a refused call, the provider's status; words go to users only for
    USER_FACING_STATUSES. None: a failed job's message, always for users.
    """
    if not words or not str(words).strip() or (status is not None and status not in USER_FACING_STATUSES):
        return ""
    return f"{PROVIDER_MESSAGE}{words}"
