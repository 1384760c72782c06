"""The nano-banana-2 asynchronous job API (docs/design.md §7): createTask, recordInfo.

This API answers HTTP 200 with its own `code` in the body; both are checked.
"""

from __future__ import annotations

import json
from typing import Any

import requests

from integrations.shared.providers import (
    JobApi,
    JobState,
    ProviderRejected,
    call,
    classify,
    error_message,
    json_body,
)
from integrations.shared.public_errors import provider_says

CREATE_PATH = "/api/v1/jobs/createTask"
RECORD_PATH = "/api/v1/jobs/recordInfo"
FINAL_STATES = frozenset({"success", "fail"})
INPUT_FIELDS = {"aspectRatio": "aspect_ratio", "resolution": "resolution", "outputFormat": "output_format",
                "imageInput": "image_input"}


def build_create_body(model: str, params: dict[str, Any]) -> dict[str, Any]:
    """The job request for our stored requestParams (camelCase) of an image task."""
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
    """createTask and recordInfo; the body's `code` is checked as well as the HTTP status."""

    build_body = staticmethod(build_create_body)
    status_field = "state"
    final_statuses = FINAL_STATES

    def create_task(self, body: dict[str, Any]) -> str:
        data = self._checked(call(self.session, "POST", self.base_url + CREATE_PATH, json=body))
        task_id = data.get("taskId")
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
        message = f"Nano Banana job {state}" + (f": {record['failCode']}" if record.get("failCode") else "")
        return JobState(state, True, error=message + provider_says(record.get("failMsg")))

    @staticmethod
    def _checked(response: requests.Response) -> dict[str, Any]:
        body = json_body(response)
        code = body.get("code", response.status_code)
        status = code if isinstance(code, int) else response.status_code
        if response.status_code >= 300 and status < 300:
            status = response.status_code
        if 200 <= status < 300:
            data = body.get("data")
            return data if isinstance(data, dict) else {}
        said = body.get("msg") if isinstance(body.get("msg"), str) else None
        raise classify(status, error_message("Nano Banana", status, None, said, response.text), str(code))
