"""Activities of the image polling workflow: create the job, poll recordInfo until it is final."""

from __future__ import annotations

from temporalio import activity

from integrations.nanobanana2_image import NAMESPACE
from integrations.nanobanana2_image.client import FINAL_STATES, NanoBananaClient, build_create_body, result_urls
from integrations.shared.activities import (
    CreateInput,
    PollInput,
    PollOutcome,
    not_done,
    provider_errors,
    provider_settings,
)


def _client() -> tuple[NanoBananaClient, dict]:
    settings = provider_settings(NAMESPACE)
    return NanoBananaClient(settings["baseUrl"], settings["apiKey"]), settings


@activity.defn(name=f"{NAMESPACE}.createTask")
def create_image_task(task: CreateInput) -> str:
    """Create the image job; return its taskId."""
    client, settings = _client()
    with provider_errors(task):
        return client.create_task(build_create_body(settings["model"], task.request_params))


@activity.defn(name=f"{NAMESPACE}.pollTask")
def poll_image_task(poll: PollInput) -> PollOutcome:
    """One look at the job. Not final yet: raise, and the retry policy polls again later."""
    client, _ = _client()
    with provider_errors(poll):
        record = client.record_info(poll.external_id)
    state = record.get("state")
    if state not in FINAL_STATES:
        raise not_done(f"job {poll.external_id} is {state}")
    if state == "success":
        return PollOutcome(True, result={"imageUrls": result_urls(record), "model": record.get("model"),
                                         "externalId": poll.external_id})
    return PollOutcome(False, error=f"job failed: {record.get('failCode') or ''} {record.get('failMsg') or ''}".strip())


ACTIVITIES = [create_image_task, poll_image_task]
