"""The nano-banana-2 asynchronous job API (docs/design.md §7): createTask, recordInfo.

This API answers HTTP 200 with its own `code` in the body [S9]; both are checked, the body's code first.
An answer that carries a job `state` is read by its state before its code: a failed job's record may come
with code 501 "Generation Failed" [S8], and it is a failed job with its `failMsg`, not a failed call.
Errors are sorted by `sort_error` (the table with its sources is docs/provider-errors.md). Source tags point
at /work/shared/research/providers.md §5.
"""

from __future__ import annotations

import json
import re
from typing import Any

import requests

from integrations.shared.providers import (
    CREATE_TIMEOUT,
    JobApi,
    JobState,
    ProviderBlocked,
    ProviderError,
    ProviderJobFailed,
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

CREATE_PATH = "/api/v1/jobs/createTask"
RECORD_PATH = "/api/v1/jobs/recordInfo"
FINAL_STATES = frozenset({"success", "fail"})
INPUT_FIELDS = {"aspectRatio": "aspect_ratio", "resolution": "resolution", "outputFormat": "output_format",
                "imageInput": "image_input"}
# kie's body codes with a meaning of their own [S6][S7]; the others mean what the HTTP status would.
BODY_CODE_KINDS: dict[int, type[ProviderError]] = {
    402: ProviderBlocked,  # Insufficient Credits: every create until a top-up
    455: ProviderTransient,  # Service Unavailable: maintenance, it ends
    501: ProviderJobFailed,  # Generation Failed (with no state to read)
    505: ProviderBlocked,  # Feature Disabled: every create until it is enabled again
}
# How kie reports a job failed by content moderation is unconfirmed (providers.md §2, §6): this is a heuristic
# on failMsg and failCode. A failure it misses is retried, which costs a run; one it catches wrongly fails a
# task for good, so it looks only for words about the content policy.
MODERATED = re.compile(r"content.?policy|sensitive|safety|moderat|nsfw", re.IGNORECASE)


def sort_error(code: int) -> type[ProviderError]:
    """The kind of a kie error answer, by its body code (or the HTTP status, when the body has none)."""
    return BODY_CODE_KINDS.get(code) or error_kind(code)


def build_create_body(model: str, params: dict[str, Any], *, deadline_seconds: float | None = None) -> dict[str, Any]:
    """The job request for our stored requestParams (camelCase) of an image task.

    kie has no expiry field [S6]: `deadline_seconds` is not sent.
    """
    job_input: dict[str, Any] = {"prompt": params["prompt"]}
    for ours, theirs in INPUT_FIELDS.items():
        if params.get(ours) is not None:
            job_input[theirs] = params[ours]
    return {"model": model, "input": job_input}


def result_urls(record: dict[str, Any]) -> list[str]:
    """`resultJson` is a JSON string holding {"resultUrls": [...]}."""
    try:
        parsed = json.loads(record.get("resultJson") or "{}")
    except ValueError:
        return []
    urls = parsed.get("resultUrls") if isinstance(parsed, dict) else None
    return [u for u in urls or [] if isinstance(u, str)]


class NanoBananaClient(JobApi):
    """createTask and recordInfo; the job state first, then the body's `code`, then the HTTP status.

    No cancel endpoint is documented [S6][S7]: `cancel` (the base's) answers False and sends nothing.
    """

    build_body = staticmethod(build_create_body)
    status_field = "state"
    final_statuses = FINAL_STATES
    create_timeout = CREATE_TIMEOUT  # no documented figure; chosen (providers.py)

    def create_task(self, body: dict[str, Any]) -> str:
        response = call(self.session, "POST", self.base_url + CREATE_PATH, json=body, timeout=self.create_timeout)
        task_id = self._checked(response).get("taskId")
        if not task_id:
            raise ProviderRejected("createTask answered without a taskId")
        return task_id

    def record_info(self, task_id: str) -> dict[str, Any]:
        return self._checked(call(self.session, "GET", self.base_url + RECORD_PATH, params={"taskId": task_id}))

    def get_record(self, external_id: str) -> dict[str, Any]:
        return self.record_info(external_id)

    def ended(self, external_id: str, state: str, record: dict[str, Any]) -> JobState:
        if state == "success":
            return JobState(state, True, True, result={"imageUrls": result_urls(record), "model": record.get("model"),
                                                       "externalId": external_id})
        fail_code, fail_msg = str(record.get("failCode") or ""), str(record.get("failMsg") or "")
        message = f"Nano Banana job {state}" + (f": {fail_code}" if fail_code else "")
        return JobState(state, True, error=message + provider_says(fail_msg),
                        retryable=not MODERATED.search(f"{fail_code} {fail_msg}"))

    @staticmethod
    def _checked(response: requests.Response) -> dict[str, Any]:
        body = json_body(response)
        data = body.get("data")
        if isinstance(data, dict) and data.get("state"):  # a job's record: its state says how it is
            return data
        code = body.get("code")
        own_code = isinstance(code, int) and not isinstance(code, bool) and not (
            response.status_code >= 300 and code < 300)  # a 200 in the body of an HTTP error is not believed
        status = code if own_code else response.status_code
        if 200 <= status < 300:
            return data if isinstance(data, dict) else {}
        said = body.get("msg") if isinstance(body.get("msg"), str) else None
        kind = sort_error(status)  # kie's code, or with none the HTTP status, read by the same table
        if kind is ProviderJobFailed:  # the words of a failed job are for users, like a failMsg
            message = f"Nano Banana {status}" + (provider_says(said) or f": {said or response.text[:200]}")
        else:
            message = error_message("Nano Banana", status, None, said, response.text)
        raise classify(status, message, str(status), kind=kind, retry_after=retry_after(response))
