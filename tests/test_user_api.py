"""The user flow over HTTP: create a video and an image task, read each back, read its events."""

import pytest

from tests.conftest import BACKENDS, IMAGE, VIDEO

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)  # the same assertions on both stores


@pytest.mark.parametrize("path, namespace, body", [
    ("/api/video/generate", VIDEO, {"prompt": "a cat surfing", "ratio": "16:9", "duration": 5, "watermark": False}),
    ("/api/image/generate", IMAGE, {"prompt": "a banana", "aspectRatio": "1:1", "imageInput": ["https://x/a.png"]}),
])
def test_create_read_and_events(client, path, namespace, body):
    created = client.post(path, json=body)
    assert created.status_code == 201
    assert created.json["status"] == "pending"
    task_id = created.json["taskId"]

    task = client.get(f"/api/tasks/{task_id}").json
    assert task["id"] == task_id
    assert task["namespace"] == namespace
    assert task["status"] == "pending"
    assert task["attempts"] == 0
    assert task["requestParams"] == body
    assert task["startedAt"] is None and task["result"] is None and task["error"] is None
    assert task["createdAt"] == task["updatedAt"]

    events = client.get(f"/api/tasks/{task_id}/events").json["events"]
    assert [(e["status"], e["attempt"]) for e in events] == [("pending", 0)]


def test_unknown_task_is_404(client):
    for url in ("/api/tasks/nope", "/api/tasks/nope/events"):
        response = client.get(url)
        assert response.status_code == 404
        assert response.json == {"success": False, "error": "Task not found"}


def test_healthz(client):
    assert client.get("/healthz").json["status"] == "ok"
