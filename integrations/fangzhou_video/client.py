"""Volcengine Ark content generation tasks API (DESIGN §7): create, query, cancel."""

from __future__ import annotations

from typing import Any

import requests

from integrations.shared.providers import ProviderRejected, call, classify, json_body

TASKS_PATH = "/contents/generations/tasks"
FINAL_STATUSES = {"succeeded", "failed", "cancelled", "expired"}
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


class ArkClient:
    """A thin client: one method per endpoint, errors sorted into rejected or transient."""

    def __init__(self, base_url: str, api_key: str, session: requests.Session | None = None):
        self.base_url = base_url.rstrip("/")
        self.session = session or requests.Session()
        self.session.headers["Authorization"] = f"Bearer {api_key}"

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

    @staticmethod
    def _checked(response: requests.Response) -> dict[str, Any]:
        body = json_body(response)
        if 200 <= response.status_code < 300:
            return body
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        code = error.get("code")
        message = f"Ark {response.status_code} {code or ''}: {error.get('message') or response.text[:200]}".strip()
        raise classify(response.status_code, message, code)
