"""The provider clients against the fakes alone: requests match docs/design.md §7, errors are sorted right."""

import json

import pytest
import requests

from dev.stack import fake_provider, free_port
from integrations.fangzhou_video.client import ArkClient
from integrations.fangzhou_video.client import build_create_body as ark_body
from integrations.nanobanana2_image.client import NanoBananaClient, result_urls
from integrations.nanobanana2_image.client import build_create_body as banana_body
from integrations.shared.providers import ProviderRejected, ProviderTransient
from tests.conftest import wait_until

pytestmark = pytest.mark.slow
KEY = "client-test-key"


@pytest.fixture(scope="module")
def fakes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fakes")
    with fake_provider("ark", folder / "ark.log", KEY, step_seconds=0.2) as ark, \
            fake_provider("nanobanana", folder / "banana.log", KEY, step_seconds=0.2) as banana:
        yield {"ark": ark, "banana": banana}


def last_request(fake):
    return requests.get(f"{fake}/_fake/requests", timeout=5).json()[-1]


def test_ark_requests_match_the_real_api(fakes):
    client = ArkClient(f"{fakes['ark']}/api/v3", KEY)
    params = {"prompt": "a fox", "ratio": "16:9", "duration": 5, "resolution": "720p", "seed": 7,
              "watermark": False, "firstFrameUrl": "https://x/first.png"}
    task_id = client.create_task(ark_body("doubao-seedance-1-0-pro-250528", params))
    sent = last_request(fakes["ark"])
    assert (sent["method"], sent["path"]) == ("POST", "/api/v3/contents/generations/tasks")
    assert sent["headers"] == {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    assert sorted(sent["json"]) == ["content", "duration", "model", "ratio", "resolution", "seed", "watermark"]
    assert sent["json"]["content"] == [
        {"type": "text", "text": "a fox"},
        {"type": "image_url", "image_url": {"url": "https://x/first.png"}, "role": "first_frame"}]
    assert task_id.startswith("cgt-")

    task = wait_until(lambda: (t := client.get_task(task_id))["status"] == "succeeded" and t, message="succeeded")
    sent = last_request(fakes["ark"])
    assert (sent["method"], sent["path"], sent["json"]) == ("GET", f"/api/v3/contents/generations/tasks/{task_id}",
                                                           None)
    assert sent["headers"]["Authorization"] == f"Bearer {KEY}"
    assert set(task) >= {"id", "model", "status", "content", "usage", "created_at", "updated_at"}
    assert task["content"]["video_url"].endswith(".mp4")


def test_ark_cancel_is_a_delete_of_a_queued_task(fakes):
    client = ArkClient(f"{fakes['ark']}/api/v3", KEY)
    task_id = client.create_task(ark_body("m", {"prompt": "to cancel [slow:30]"}))
    client.cancel_task(task_id)
    sent = last_request(fakes["ark"])
    assert (sent["method"], sent["path"]) == ("DELETE", f"/api/v3/contents/generations/tasks/{task_id}")
    assert client.get_task(task_id)["status"] == "cancelled"


def test_nanobanana_requests_match_the_real_api(fakes):
    client = NanoBananaClient(fakes["banana"], KEY)
    params = {"prompt": "a pear", "aspectRatio": "1:1", "resolution": "2K", "outputFormat": "jpg",
              "imageInput": ["https://x/in.png"]}
    task_id = client.create_task(banana_body("nano-banana-2", params))
    sent = last_request(fakes["banana"])
    assert (sent["method"], sent["path"]) == ("POST", "/api/v1/jobs/createTask")
    assert sent["headers"] == {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    assert sent["json"] == {"model": "nano-banana-2", "input": {
        "prompt": "a pear", "aspect_ratio": "1:1", "resolution": "2K", "output_format": "jpg",
        "image_input": ["https://x/in.png"]}}

    record = wait_until(lambda: (r := client.record_info(task_id))["state"] == "success" and r, message="success")
    sent = last_request(fakes["banana"])
    assert (sent["method"], sent["path"], sent["query"]) == ("GET", "/api/v1/jobs/recordInfo", {"taskId": task_id})
    assert isinstance(record["resultJson"], str)  # a JSON string, as the real API sends it
    assert result_urls(record) == json.loads(record["resultJson"])["resultUrls"]
    assert result_urls(record)[0].endswith(".jpg")


@pytest.mark.parametrize("kind", ["ark", "banana"])
@pytest.mark.parametrize("prompt, key, error", [
    ("blocked [reject]", KEY, ProviderRejected),
    ("fine", "wrong-key", ProviderRejected),
    ("busy [ratelimit:1]", KEY, ProviderTransient),
    ("broken [error500:1]", KEY, ProviderTransient),
])
def test_errors_are_sorted_into_rejected_or_transient(fakes, kind, prompt, key, error):
    prompt = f"{prompt} {kind}-{key}"
    if kind == "ark":
        client, body = ArkClient(f"{fakes['ark']}/api/v3", key), ark_body("m", {"prompt": prompt})
    else:
        client, body = NanoBananaClient(fakes["banana"], key), banana_body("m", {"prompt": prompt})
    with pytest.raises(error) as caught:
        client.create_task(body)
    assert caught.value.status in (400, 401, 429, 500)


def test_unknown_task_is_rejected_and_no_server_is_transient(fakes):
    with pytest.raises(ProviderRejected, match="404"):
        ArkClient(f"{fakes['ark']}/api/v3", KEY).get_task("cgt-missing")
    with pytest.raises(ProviderRejected, match="404"):
        NanoBananaClient(fakes["banana"], KEY).record_info("missing")
    with pytest.raises(ProviderTransient, match="failed"):
        ArkClient(f"http://127.0.0.1:{free_port()}/api/v3", KEY).get_task("x")
