"""Volcengine Ark content generation tasks API (docs/design.md §7): create, query, cancel.

Errors are sorted by HTTP status and Ark's `error.code` (`sort_error`; the table with its sources is
docs/provider-errors.md). Source tags ([S2], [S4], ...) point at /work/shared/research/providers.md §5.
"""

from __future__ import annotations

import math
import re
from typing import Any

import requests

from integrations.shared.providers import (
    ARK_CREATE_TIMEOUT,
    JobApi,
    JobState,
    ProviderBlocked,
    ProviderError,
    ProviderRejected,
    ProviderTransient,
    call,
    classify,
    error_kind,
    error_message,
    json_body,
    retry_after,
)
from integrations.shared.public_errors import provider_says

TASKS_PATH = "/contents/generations/tasks"
FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled", "expired"})
OPTIONAL_FIELDS = {"ratio": "ratio", "duration": "duration", "resolution": "resolution", "seed": "seed",
                   "watermark": "watermark"}
EXPIRES_MIN, EXPIRES_MAX = 3600, 259200  # execution_expires_after's documented range, seconds [S2]

# A 400 that says "temporarily unavailable, please try again later" [S4]: the endpoint, not the request.
CLOSED_ENDPOINT = "InvalidEndpoint.ClosedEndpoint"
# 404s about the endpoint or model (not opened, paused, gone) rather than the job [S4][S5a]: every task gets them.
MODEL_UNAVAILABLE = re.compile(r"^InvalidEndpointOrModel\b|^InvalidEndpoint\.NotFound$|ModelNotOpen|"
                               r"ModelIDAccessDisabled$")
# 429s that do not clear in seconds: a used-up quota (or the queued-task limit), a model paused at the limit
# the account set for it [S5b].
ACCOUNT_LIMITS = frozenset({"QuotaExceeded", "SetLimitExceeded"})
# A job failed by content moderation (e.g. OutputVideoSensitiveContentDetected [S5b]): the same prompt would
# fail again, so the task is not retried.
MODERATED = "SensitiveContent"


def sort_error(status: int, code: str | None) -> type[ProviderError]:
    """The kind of an Ark error answer, by HTTP status and `error.code`."""
    code = code or ""
    if status == 400:
        return ProviderTransient if code == CLOSED_ENDPOINT else ProviderRejected
    if status == 404:
        return ProviderBlocked if MODEL_UNAVAILABLE.search(code) else ProviderRejected
    if status == 429 and code in ACCOUNT_LIMITS:
        return ProviderBlocked
    return error_kind(status)  # 401/403 blocked; 408/409/425/429 and >= 500 transient; other 4xx rejected


def expires_after(deadline_seconds: float) -> int:
    """Our deadline as Ark's `execution_expires_after`, within its range [S2]: Ark ends the task by itself no
    sooner than we give up on it."""
    if not math.isfinite(deadline_seconds):
        return EXPIRES_MAX
    return min(max(math.ceil(deadline_seconds), EXPIRES_MIN), EXPIRES_MAX)


def build_create_body(model: str, params: dict[str, Any], *, deadline_seconds: float | None = None) -> dict[str, Any]:
    """The Ark request body for our stored requestParams (camelCase) of a video task.

    `return_last_frame` is always asked for: Ark returns `last_frame_url` only then [S2].
    """
    content: list[dict[str, Any]] = [{"type": "text", "text": params["prompt"]}]
    if params.get("firstFrameUrl"):
        content.append({"type": "image_url", "image_url": {"url": params["firstFrameUrl"]}, "role": "first_frame"})
    body: dict[str, Any] = {"model": model, "content": content}
    for ours, theirs in OPTIONAL_FIELDS.items():
        if params.get(ours) is not None:
            body[theirs] = params[ours]
    body["return_last_frame"] = True
    if deadline_seconds is not None:
        body["execution_expires_after"] = expires_after(deadline_seconds)
    return body


class ArkClient(JobApi):
    """A thin client: one method per endpoint, errors sorted by `sort_error`."""

    job_label = "Ark task"
    build_body = staticmethod(build_create_body)
    final_statuses = FINAL_STATUSES
    create_timeout = ARK_CREATE_TIMEOUT

    def create_task(self, body: dict[str, Any]) -> str:
        response = call(self.session, "POST", self.base_url + TASKS_PATH, json=body, timeout=self.create_timeout)
        task_id = self._checked(response).get("id")
        if not task_id:
            raise ProviderRejected(f"Ark create answered without a task id: {response.text[:200]}")
        return task_id

    def get_task(self, task_id: str) -> dict[str, Any]:
        return self._checked(call(self.session, "GET", f"{self.base_url}{TASKS_PATH}/{task_id}"))

    def cancel_task(self, task_id: str) -> None:
        """DELETE: cancels a queued task, deletes a finished one's record, refuses a running one [S2]."""
        self._checked(call(self.session, "DELETE", f"{self.base_url}{TASKS_PATH}/{task_id}"))

    def cancel(self, external_id: str) -> bool:
        """Cancel the task if it is still queued (Ark cancels nothing else [S2]); True only if it was.

        Looked at first, so a finished task's record is never deleted by our DELETE.
        """
        try:
            status = self.get_task(external_id).get("status")
        except ProviderRejected as exc:
            if exc.status == 404:  # gone (or never known): nothing to cancel
                return False
            raise
        if status != "queued":
            return False
        try:
            self.cancel_task(external_id)
        except ProviderError as exc:
            if exc.status in (400, 404):  # it left the queue (or the record went) meanwhile
                return False
            raise
        return True

    def get_record(self, external_id: str) -> dict[str, Any]:
        return self.get_task(external_id)

    def ended(self, external_id: str, status: str, task: dict[str, Any]) -> JobState:
        if status == "succeeded":
            content = task.get("content") or {}
            return JobState(status, True, True, result={
                "videoUrl": content.get("video_url"), "lastFrameUrl": content.get("last_frame_url"),
                "usage": task.get("usage"), "model": task.get("model"), "externalId": external_id})
        error = task.get("error") if isinstance(task.get("error"), dict) else {}
        code = str(error.get("code") or "")
        message = f"Ark task {status}" + (f": {code}" if code else "")
        # expired and cancelled stay retryable: a later attempt may well finish in time
        return JobState(status, True, error=message + provider_says(error.get("message")),
                        retryable=MODERATED not in code)

    @staticmethod
    def _checked(response: requests.Response) -> dict[str, Any]:
        body = json_body(response)
        if 200 <= response.status_code < 300:
            return body
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        code = error.get("code") if isinstance(error.get("code"), str) else None
        message = error_message("Ark", response.status_code, code, error.get("message"), response.text)
        raise classify(response.status_code, message, code, kind=sort_error(response.status_code, code),
                       retry_after=retry_after(response))
