"""Results that last, through the whole stack (web, processor, worker, Temporal, fake providers): the worker
copies each completed job's media into our store before reporting `completed`, and the web process serves
them after the provider is gone; a store that fails keeps the task waiting, never fails it."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from dev import dbaccess
from dev.stack import Stack
from settings import ROOT
from tests.conftest import BACKENDS, wait_until
from workflows import MEDIA_GIVEN_UP

pytestmark = [pytest.mark.slow,
              pytest.mark.parametrize("backend", BACKENDS, indirect=True)]  # the same assertions on both stores
MP4 = (ROOT / "fakes" / "media" / "video.mp4").read_bytes()
PNG = __import__("fakes.common", fromlist=["png"]).png()  # what the fakes serve as a last frame


def completed(stack, task_id, timeout=90.0):
    return wait_until(lambda: (task := stack.task(task_id))["status"] == "completed" and task, timeout=timeout,
                      interval=0.3, message=f"{task_id} completed")


def event_statuses(stack, task_id):
    rows = dbaccess.query(stack.database, "SELECT status FROM task_events WHERE task_id = ? ORDER BY id", (task_id,))
    return [r["status"] for r in rows]


def fetch(stack, url, **headers):
    return requests.get(url, headers={**stack.user, **headers}, timeout=10)


def test_media_are_served_after_the_provider_is_stopped(tmp_path, db_env):
    with Stack(tmp_path, **db_env).start_all() as stack:
        video_id = stack.create("video", "a lighthouse in a storm")
        image_id = stack.create("image", "a banana on the moon")
        video, image = completed(stack, video_id), completed(stack, image_id)
        # The provider's URLs are kept; ours are added beside them.
        assert video["result"]["videoUrl"].startswith(stack.fake("ark"))
        ours = f"{stack.web_url}/api/tasks/{video_id}/media"
        assert video["result"]["media"] == {"videoUrl": f"{ours}/video.mp4", "lastFrameUrl": f"{ours}/last-frame.png"}
        assert image["result"]["media"] == {"imageUrls": [f"{stack.web_url}/api/tasks/{image_id}/media/image-1.png"]}
        provider_bytes = {url: requests.get(url, timeout=10).content
                          for url in (video["result"]["lastFrameUrl"], image["result"]["imageUrls"][0])}

        stack.kill("ark")
        stack.kill("banana")
        with pytest.raises(requests.ConnectionError):
            requests.get(video["result"]["videoUrl"], timeout=5)

        answer = fetch(stack, video["result"]["media"]["videoUrl"])
        assert answer.status_code == 200 and answer.content == MP4
        assert answer.headers["Content-Type"] == "video/mp4" and answer.headers["X-Content-Type-Options"] == "nosniff"
        part = fetch(stack, video["result"]["media"]["videoUrl"], Range="bytes=0-99")
        assert part.status_code == 206 and part.content == MP4[:100]
        frame = fetch(stack, video["result"]["media"]["lastFrameUrl"])
        assert frame.headers["Content-Type"] == "image/png"
        assert frame.content == provider_bytes[video["result"]["lastFrameUrl"]]
        picture = fetch(stack, image["result"]["media"]["imageUrls"][0])
        assert picture.content == provider_bytes[image["result"]["imageUrls"][0]]
        thumbnail = requests.get(f"{stack.web_url}/dashboard/media/{image_id}/image-1.png", auth=stack.DASHBOARD,
                                 timeout=10)
        assert thumbnail.status_code == 200 and thumbnail.content == picture.content
        assert requests.get(video["result"]["media"]["videoUrl"], timeout=10).status_code == 401  # no key
        # Where they live: MEDIA_DIR's default, beside the database.
        assert (Path(stack.db_path).parent / "media" / video_id / "video.mp4").read_bytes() == MP4


def test_a_failing_store_is_retried_and_never_fails_the_task(tmp_path, db_env):
    """MEDIA_DIR is unusable (a file stands where the folder should be): the task stays `processing` while
    the storeMedia activity is retried; once the disk is back, it completes with its media."""
    blocker = tmp_path / "blocked-media"
    blocker.write_text("in the way")
    with Stack(tmp_path, MEDIA_DIR=str(blocker), **db_env).start_all() as stack:
        task_id = stack.create("image", "a kite over the sea")
        wait_until(lambda: "media not stored; will retry" in (tmp_path / "worker.log").read_text(), timeout=60,
                   interval=0.3, message="a failed storeMedia attempt")
        wait_until(lambda: (tmp_path / "worker.log").read_text().count("media not stored; will retry") >= 2,
                   timeout=30, interval=0.3, message="a retried storeMedia attempt")
        assert stack.task(task_id)["status"] == "processing"
        blocker.unlink()
        task = completed(stack, task_id, timeout=120)
        assert task["result"]["media"]["imageUrls"] == [f"{stack.web_url}/api/tasks/{task_id}/media/image-1.png"]
        assert "mediaNote" not in task["result"]
        assert fetch(stack, task["result"]["media"]["imageUrls"][0]).status_code == 200
        statuses = event_statuses(stack, task_id)
        assert statuses == ["pending", "queued", "processing", "completed"]  # no failed attempt


def test_a_file_too_large_completes_with_the_provider_url_and_a_note(tmp_path, db_env):
    """MEDIA_MAX_BYTES below the fake's last frame (a 6 KB PNG) but above its video (2 KB): the frame is refused
    (noted), the video stored; the task completes all the same, the provider's frame URL kept."""
    with Stack(tmp_path, MEDIA_MAX_BYTES=len(PNG) - 1, **db_env).start_all() as stack:
        task_id = stack.create("video", "a very large last frame")
        task = completed(stack, task_id)
        assert task["result"]["lastFrameUrl"].startswith(stack.fake("ark"))
        assert list(task["result"]["media"]) == ["videoUrl"]
        assert "lastFrameUrl" in task["result"]["mediaNote"] and "MEDIA_MAX_BYTES" in task["result"]["mediaNote"]


def test_a_store_that_never_comes_back_completes_the_task_with_provider_urls_and_a_note(tmp_path, db_env):
    """MEDIA_GIVE_UP_SECONDS=6 (24 h by default, the links' life) and MEDIA_DIR unusable throughout: once the
    retries run out the task completes all the same, with the provider URLs and a note, never failed."""
    blocker = tmp_path / "blocked-media"
    blocker.write_text("in the way")
    with Stack(tmp_path, MEDIA_DIR=str(blocker), MEDIA_GIVE_UP_SECONDS=6, **db_env).start_all() as stack:
        task_id = stack.create("video", "a harbour at night")
        task = completed(stack, task_id, timeout=120)
        assert task["result"]["videoUrl"].startswith(stack.fake("ark")) and "media" not in task["result"]
        assert task["result"]["mediaNote"] == MEDIA_GIVEN_UP  # no server path shown to users
        given_up = [line for line in (tmp_path / "worker.log").read_text().splitlines()
                    if "media not stored; completing with the provider URLs only" in line]
        assert len(given_up) == 1 and "blocked-media" in given_up[0]  # the cause, for operators
        statuses = event_statuses(stack, task_id)
        assert statuses == ["pending", "queued", "processing", "completed"]
