"""The nano-banana-2 asynchronous job API (DESIGN §7): createTask, recordInfo.

This API answers HTTP 200 with its own `code` in the body; both are checked.
"""

from __future__ import annotations

import json
from typing import Any

import requests

from integrations.shared.providers import ProviderRejected, call, classify, json_body

CREATE_PATH = "/api/v1/jobs/createTask"
RECORD_PATH = "/api/v1/jobs/recordInfo"
FINAL_STATES = {"success", "fail"}
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


class NanoBananaClient:
    def __init__(self, base_url: str, api_key: str, session: requests.Session | None = None):
        self.base_url = base_url.rstrip("/")
        self.session = session or requests.Session()
        self.session.headers["Authorization"] = f"Bearer {api_key}"

    def create_task(self, body: dict[str, Any]) -> str:
        data = self._checked(call(self.session, "POST", self.base_url + CREATE_PATH, json=body))
        task_id = data.get("taskId")
        if not task_id:
            raise ProviderRejected("createTask answered without a taskId")
        return task_id

    def record_info(self, task_id: str) -> dict[str, Any]:
        return self._checked(call(self.session, "GET", self.base_url + RECORD_PATH, params={"taskId": task_id}))

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
        raise classify(status, f"Nano Banana {status}: {body.get('msg') or response.text[:200]}", str(code))
