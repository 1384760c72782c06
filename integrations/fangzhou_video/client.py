"""Volcengine Ark content generation tasks API (docs/design.md §7): create, query, cancel."""

from __future__ import annotations

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

TASKS_PATH = "/contents/generations/tasks"
FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled", "expired"})
OPTIONAL_FIELDS = {"ratio": "ratio", "duration": "duration", "resolution": "resolution", "seed": "seed",
                   "watermark": "watermark"}


def build_create_body(model: str, params: dict[str, Any]) -> dict[str, Any]:
    """The Ark request body for our stored requestParams (camelCase) of a video task."""
    content: list[dict[str, Any]] = [{"type": "text", "text": params["prompt"]}]
    if params.get("firstFrameUrl"):
        content.append({"type": "image_url", "image_url": {"url": params["firstFrameUrl"]}, "role": "first_frame"})
    body: dict[str, Any] = {"model": model, "content": content}
    for ours, theirs in OPTIONAL_FIELDS.items():
        if params.get(ours) is not None:
            body[theirs] = params[ours]
    return body


class ArkClient(JobApi):
    """A thin client: one method per endpoint, errors sorted into rejected or transient."""

    job_label = "Ark task"
    build_body = staticmethod(build_create_body)
    final_statuses = FINAL_STATUSES

    def create_task(self, body: dict[str, Any]) -> str:
        response = call(self.session, "POST", self.base_url + TASKS_PATH, json=body)
        task_id = self._checked(response).get("id")
        if not task_id:
            raise ProviderRejected(f"Ark create answered without a task id: {response.text[:200]}")
        return task_id

    def get_task(self, task_id: str) -> dict[str, Any]:
        return self._checked(call(self.session, "GET", f"{self.base_url}{TASKS_PATH}/{task_id}"))

    def cancel_task(self, task_id: str) -> None:
        self._checked(call(self.session, "DELETE", f"{self.base_url}{TASKS_PATH}/{task_id}"))

    def get_record(self, external_id: str) -> dict[str, Any]:
        return self.get_task(external_id)

    def ended(self, external_id: str, status: str, task: dict[str, Any]) -> JobState:
        if status == "succeeded":
            content = task.get("content") or {}
            return JobState(status, True, True, result={
                "videoUrl": content.get("video_url"), "lastFrameUrl": content.get("last_frame_url"),
                "usage": task.get("usage"), "model": task.get("model"), "externalId": external_id})
        error = task.get("error") or {}
        message = f"Ark task {status}" + (f": {error['code']}" if error.get("code") else "")
        return JobState(status, True, error=message + provider_says(error.get("message")))

    @staticmethod
    def _checked(response: requests.Response) -> dict[str, Any]:
        body = json_body(response)
        if 200 <= response.status_code < 300:
            return body
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        code = error.get("code")
        message = error_message("Ark", response.status_code, code, error.get("message"), response.text)
        raise classify(response.status_code, message, code)
