"""Activities of the video polling workflow: create the Ark task, poll it until it is final."""

from __future__ import annotations

from temporalio import activity

from integrations.fangzhou_video import NAMESPACE
from integrations.fangzhou_video.client import FINAL_STATUSES, ArkClient, build_create_body
from integrations.shared.activities import (
    CreateInput,
    PollInput,
    PollOutcome,
    not_done,
    provider_errors,
    provider_settings,
)


def _client() -> tuple[ArkClient, dict]:
    settings = provider_settings(NAMESPACE)
    return ArkClient(settings["baseUrl"], settings["apiKey"]), settings


@activity.defn(name=f"{NAMESPACE}.createTask")
def create_video_task(task: CreateInput) -> str:
    """Create the Ark generation task; return its id."""
    client, settings = _client()
    with provider_errors(task):
        return client.create_task(build_create_body(settings["model"], task.request_params))


@activity.defn(name=f"{NAMESPACE}.pollTask")
def poll_video_task(poll: PollInput) -> PollOutcome:
    """One look at the Ark task. Not final yet: raise, and the retry policy polls again later."""
    client, _ = _client()
    with provider_errors(poll):
        task = client.get_task(poll.external_id)
    status = task.get("status")
    if status not in FINAL_STATUSES:
        raise not_done(f"Ark task {poll.external_id} is {status}")
    if status == "succeeded":
        content = task.get("content") or {}
        return PollOutcome(True, result={
            "videoUrl": content.get("video_url"), "lastFrameUrl": content.get("last_frame_url"),
            "usage": task.get("usage"), "model": task.get("model"), "externalId": poll.external_id})
    error = task.get("error") or {}
    message = f"Ark task {status}: {error.get('code') or ''} {error.get('message') or ''}".strip()
    return PollOutcome(False, error=message)


ACTIVITIES = [create_video_task, poll_video_task]
