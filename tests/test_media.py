"""Media that last (issue 15, part 3): the store's two backends, the download rules, and the served routes.

Real parts: files on disk, an S3-compatible server (moto's, on loopback) reached over HTTP by boto3, a real
HTTP server for the provider's links, the web app with its real auth. The whole stack (worker, Temporal,
fakes stopped afterwards) is in tests/test_media_stack.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from dev.stack import free_port, stop, wait_for_http
from integrations.shared.media import (
    IMAGE_TYPES,
    VIDEO_TYPES,
    LocalStore,
    MediaNotFound,
    S3Store,
    StorageFailed,
    media_dir,
    media_store,
)
from integrations.shared.media_copy import DownloadFailed, MediaRefused, copy_media, download
from settings import ROOT, load_config
from tests.conftest import DASHBOARD, USER, VIDEO, both_backends

MP4 = (ROOT / "fakes" / "media" / "video.mp4").read_bytes()
JPG = (ROOT / "fakes" / "media" / "image.jpg").read_bytes()
PNG = __import__("fakes.common", fromlist=["png"]).png()
TASK = "0b9e4d36-5c2a-4f7e-8d31-6a1f2c3b4d01"


# -- the provider's links: a real HTTP server on loopback --------------------------------------------------------

class Links:
    """A WSGI server whose paths behave as a provider's result links may: /<behaviour>.<ext>."""

    def __init__(self):
        self.hits: dict[str, int] = {}
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @Request.application
    def app(self, request: Request) -> Response:
        name = request.path.strip("/")
        self.hits[name] = self.hits.get(name, 0) + 1
        behaviour = name.partition(".")[0]
        if behaviour == "video":
            return Response(MP4, mimetype="video/mp4")
        if behaviour == "png":
            return Response(PNG, mimetype="image/png")
        if behaviour == "jpg":
            return Response(JPG, mimetype="image/jpeg")
        if behaviour == "octet":  # a CDN that labels everything so
            return Response(PNG, mimetype="application/octet-stream")
        if behaviour == "untyped":  # no Content-Type at all
            answer = Response(JPG)
            del answer.headers["Content-Type"]
            return answer
        if behaviour == "html":
            return Response("<html>an error page</html>", mimetype="text/html")
        if behaviour == "lying":  # says PNG, is an HTML page
            return Response(b"<html>not an image</html>", mimetype="image/png")
        if behaviour == "videoasimage":  # a real MP4 where an image is expected
            return Response(MP4, mimetype="video/mp4")
        if behaviour == "big":  # Content-Length says it all
            return Response(PNG + b"\0" * 5000, mimetype="image/png")
        if behaviour == "endless":  # no Content-Length: only counting stops it
            def chunks():
                yield PNG
                for _ in range(1000):
                    yield b"\0" * 1024
            return Response(chunks(), mimetype="image/png")
        if behaviour == "stall":  # the headers, a first chunk, then silence past the read timeout
            def stalled():
                yield PNG[:20]
                time.sleep(3)
                yield PNG[20:]
            return Response(stalled(), mimetype="image/png")
        if behaviour == "gone":
            return Response("expired", status=403)
        if behaviour == "busy":
            return Response("try later", status=503)
        return Response("no such link", status=404)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()


@pytest.fixture(scope="module")
def links():
    with Links() as served:
        yield served


# -- the store: one contract, two backends -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """moto's S3-compatible server on 127.0.0.1, and a bucket in it; yields its endpoint URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/moto-api/", timeout=30, process=process)
        yield url
    finally:
        stop(process)


@pytest.fixture
def aws_env(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)


def new_bucket(endpoint: str) -> str:
    import boto3

    name = f"media-{time.monotonic_ns()}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "media")
    request.getfixturevalue("aws_env")
    endpoint = request.getfixturevalue("s3_server")
    return S3Store(new_bucket(endpoint), endpoint, prefix="media/")


def test_put_then_read_whole_and_in_ranges(store):
    assert store.put(TASK, "video.mp4", [MP4[:1000], MP4[1000:]]) == len(MP4)
    item = store.stat(TASK, "video.mp4")
    assert (item.size, item.content_type) == (len(MP4), "video/mp4")
    assert b"".join(store.read(TASK, "video.mp4")) == MP4
    assert b"".join(store.read(TASK, "video.mp4", 10, 20)) == MP4[10:20]
    assert b"".join(store.read(TASK, "video.mp4", len(MP4) - 5)) == MP4[-5:]
    store.put(TASK, "last-frame.png", [PNG])
    assert store.stat(TASK, "last-frame.png").content_type == "image/png"
    assert store.names(TASK) == ["last-frame.png", "video.mp4"]
    assert store.names("another-task") == []


def test_a_put_that_breaks_off_leaves_nothing_and_keeps_the_old_copy(store):
    store.put(TASK, "image-1.png", [PNG])

    def broken():
        yield b"half of a new file"
        raise MediaRefused("passed the cap")

    with pytest.raises(MediaRefused):
        store.put(TASK, "image-1.png", broken())
    with pytest.raises(MediaRefused):
        store.put(TASK, "image-2.png", broken())
    assert b"".join(store.read(TASK, "image-1.png")) == PNG  # never half of one
    assert store.names(TASK) == ["image-1.png"]
    if isinstance(store, LocalStore):  # no temporary file left behind either
        assert [p.name for p in (store.root / TASK).iterdir()] == ["image-1.png"]


def test_delete_task_removes_its_media_only(store):
    store.put(TASK, "video.mp4", [MP4])
    store.put(TASK, "last-frame.png", [PNG])
    store.put("other-task", "image-1.jpg", [JPG])
    assert store.delete_task(TASK) == 2
    assert store.names(TASK) == [] and store.delete_task(TASK) == 0
    with pytest.raises(MediaNotFound):
        store.stat(TASK, "video.mp4")
    assert store.names("other-task") == ["image-1.jpg"]


@pytest.mark.parametrize("task_id, name", [("..", "video.mp4"), (TASK, "../x.png"), (TASK, "video.exe"),
                                           ("a/b", "video.mp4"), (TASK, ".hidden.png"), ("", "video.mp4")])
def test_keys_cannot_leave_their_task(store, task_id, name):
    with pytest.raises(MediaNotFound):
        store.stat(task_id, name)
    with pytest.raises(MediaNotFound):
        store.put(task_id, name, [PNG])


def test_the_local_store_reports_a_disk_failure_as_storage_failed(tmp_path):
    blocker = tmp_path / "media"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(StorageFailed):
        LocalStore(blocker).put(TASK, "video.mp4", [MP4])


def test_an_unreachable_bucket_is_storage_failed(aws_env):
    store = S3Store("media", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StorageFailed):
        store.put(TASK, "video.mp4", [MP4])


def test_settings_choose_the_backend(tmp_path):
    environ = {"INTERNAL_API_TOKEN": "x", "DATABASE_PATH": str(tmp_path / "db" / "app.db")}
    assert media_dir(load_config(environ=environ)) == tmp_path / "db" / "media"  # beside the database
    assert media_store(load_config(environ={**environ, "MEDIA_DIR": str(tmp_path / "m")})).root == tmp_path / "m"
    chosen = media_store(load_config(environ={**environ, "MEDIA_S3_BUCKET": "b", "MEDIA_S3_PREFIX": "p/",
                                              "MEDIA_S3_ENDPOINT_URL": "http://127.0.0.1:9"}))
    assert isinstance(chosen, S3Store) and (chosen.bucket, chosen.prefix) == ("b", "p/")
    assert load_config(environ={**environ, "MEDIA_MAX_BYTES": "1000"}).get("components.media.maxBytes") == 1000


# -- the download rules ------------------------------------------------------------------------------------------

def fetched(links, path, expected=IMAGE_TYPES, limit=1_000_000, timeout=(2, 1)):
    kind, chunks = download(f"{links.url}/{path}", expected, limit, timeout=timeout)
    return kind, b"".join(chunks)


def test_a_good_link_downloads_with_its_checked_type(links):
    assert fetched(links, "video.mp4", VIDEO_TYPES) == ("video/mp4", MP4)
    assert fetched(links, "png.png") == ("image/png", PNG)
    assert fetched(links, "jpg.jpg") == ("image/jpeg", JPG)
    assert fetched(links, "octet.bin") == ("image/png", PNG)  # untyped, but its bytes are a PNG
    assert fetched(links, "untyped") == ("image/jpeg", JPG)


def test_a_content_length_above_the_cap_is_refused_before_reading(links):
    with pytest.raises(MediaRefused, match="above MEDIA_MAX_BYTES"):
        fetched(links, "big.png", limit=2000)


def test_a_stream_past_the_cap_is_cut_off(links):
    with pytest.raises(MediaRefused, match="passed MEDIA_MAX_BYTES"):
        fetched(links, "endless.png", limit=50_000)


@pytest.mark.parametrize("path, expected, says", [("html.png", IMAGE_TYPES, "text/html"),
                                                  ("lying.png", IMAGE_TYPES, "its bytes are of no known type"),
                                                  ("videoasimage.png", IMAGE_TYPES, "video/mp4"),
                                                  ("png.png", VIDEO_TYPES, "expected video/mp4")])
def test_a_wrong_content_type_is_refused(links, path, expected, says):
    with pytest.raises(MediaRefused, match=says):
        fetched(links, path, expected)


def test_a_read_timeout_is_a_download_failure_to_retry(links):
    began = time.monotonic()
    with pytest.raises(DownloadFailed, match="broke off"):
        fetched(links, "stall.png", timeout=(2, 0.5))
    assert time.monotonic() - began < 2.5


def test_a_dead_link_is_refused_and_a_busy_one_retried(links):
    with pytest.raises(MediaRefused, match="403"):
        fetched(links, "gone.png")
    with pytest.raises(DownloadFailed, match="503"):
        fetched(links, "busy.png")
    with pytest.raises(DownloadFailed):
        download(f"http://127.0.0.1:{free_port()}/x.png", IMAGE_TYPES, 1000, timeout=(1, 1))
    with pytest.raises(MediaRefused, match="http"):
        download("file:///etc/passwd", IMAGE_TYPES, 1000)


# -- copying a result: what the storeMedia activity runs ---------------------------------------------------------

def test_copy_names_mirror_the_result_and_a_second_run_stores_the_same(links, tmp_path):
    store = LocalStore(tmp_path / "media")
    result = {"videoUrl": f"{links.url}/video.mp4", "lastFrameUrl": f"{links.url}/png.png", "usage": {"t": 1}}
    first = copy_media(store, TASK, result, 1_000_000)
    assert first == ({"videoUrl": "video.mp4", "lastFrameUrl": "last-frame.png"}, [])
    hits = dict(links.hits)
    assert copy_media(store, TASK, result, 1_000_000) == first  # idempotent: same names, nothing fetched again
    assert links.hits == hits
    assert b"".join(store.read(TASK, "video.mp4")) == MP4
    images = {"imageUrls": [f"{links.url}/jpg.jpg", f"{links.url}/html.png", f"{links.url}/png.png"]}
    media, notes = copy_media(store, "image-task", images, 1_000_000)
    assert media == {"imageUrls": ["image-1.jpg", "image-3.png"]}  # the refused one is absent, and noted
    assert len(notes) == 1 and notes[0].startswith("imageUrls[1]: ") and "text/html" in notes[0]


def test_a_storage_failure_raises_so_the_activity_is_retried_and_then_succeeds(links, tmp_path):
    blocker = tmp_path / "media"
    blocker.write_text("in the way")
    store = LocalStore(blocker)
    result = {"videoUrl": f"{links.url}/video.mp4"}
    with pytest.raises(StorageFailed):
        copy_media(store, TASK, result, 1_000_000)
    blocker.unlink()  # the disk is back
    assert copy_media(store, TASK, result, 1_000_000) == ({"videoUrl": "video.mp4"}, [])


# -- serving -----------------------------------------------------------------------------------------------------

@pytest.fixture
def completed(app, tasks):
    """A completed video task whose media are stored: its id."""
    task_id = tasks.create(VIDEO)
    attempt = tasks.report(task_id, "queued").json["attempt"]
    tasks.report(task_id, "processing", attempt=attempt, taskId="cgt-1")
    app.extensions["media"].put(task_id, "video.mp4", [MP4])
    app.extensions["media"].put(task_id, "last-frame.png", [PNG])
    app.extensions["media"].put(task_id, "image-9.png", [PNG])  # stored, but not in the result: never served
    data = {"videoUrl": "https://provider.example/v.mp4", "lastFrameUrl": "https://provider.example/f.png",
            "media": {"videoUrl": "video.mp4", "lastFrameUrl": "last-frame.png"}}
    assert tasks.report(task_id, "completed", attempt=attempt, data=data).status_code == 200
    return task_id


@both_backends
def test_the_store_is_beside_the_database_by_default(app, db_path):
    assert app.extensions["media"].root == Path(db_path).parent / "media"


@both_backends
def test_served_under_the_client_key_with_its_type_and_nosniff(client, completed):
    answer = client.get(f"/api/tasks/{completed}/media/video.mp4")
    assert answer.status_code == 200 and answer.get_data() == MP4
    assert answer.mimetype == "video/mp4" and answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Accept-Ranges"] == "bytes" and int(answer.headers["Content-Length"]) == len(MP4)
    frame = client.get(f"/api/tasks/{completed}/media/last-frame.png")
    assert frame.mimetype == "image/png" and frame.get_data() == PNG
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong-key-0123456789"}, DASHBOARD):
        assert client.get(f"/api/tasks/{completed}/media/video.mp4", headers=headers).status_code == 401


@both_backends
def test_the_dashboard_route_needs_the_login(client, completed):
    path = f"/dashboard/media/{completed}/last-frame.png"
    assert client.get(path, headers={"Authorization": ""}).status_code == 401
    assert client.get(path, headers=USER).status_code == 401
    answer = client.get(path, headers=DASHBOARD)
    assert answer.status_code == 200 and answer.get_data() == PNG and answer.mimetype == "image/png"


@both_backends
def test_ranges_are_answered_206_and_past_the_end_416(client, completed):
    path = f"/api/tasks/{completed}/media/video.mp4"
    part = client.get(path, headers={**USER, "Range": "bytes=100-199"})
    assert part.status_code == 206 and part.get_data() == MP4[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(MP4)}" and part.headers["Content-Length"] == "100"
    tail = client.get(path, headers={**USER, "Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.get_data() == MP4[-10:]
    past = client.get(path, headers={**USER, "Range": f"bytes={len(MP4) + 5}-"})
    assert past.status_code == 416 and past.headers["Content-Range"] == f"bytes */{len(MP4)}"
    for whole in ("bytes=0-1,5-6", "pages=1-2", "nonsense"):  # several ranges, another unit, malformed: all of it
        answer = client.get(path, headers={**USER, "Range": whole})
        assert answer.status_code == 200 and answer.get_data() == MP4


@pytest.mark.parametrize("name, status", [("image-9.png", 404), ("nothing.mp4", 404), ("..", 400),
                                          ("%2e%2e", 400), ("..%2f..%2fapp.db", 404), ("video.mp4%00", 400),
                                          ("VIDEO.MP4", 400), ("video.html", 400)])
@both_backends
def test_unknown_and_malformed_names_are_4xx(client, completed, name, status):
    answer = client.get(f"/api/tasks/{completed}/media/{name}")
    assert answer.status_code == status, answer.get_data()
    assert answer.is_json and answer.json["success"] is False


@both_backends
def test_an_unknown_task_is_404(client):
    assert client.get("/api/tasks/no-such-task/media/video.mp4").status_code == 404
    assert client.get("/dashboard/media/no-such-task/video.mp4", headers=DASHBOARD).status_code == 404


@both_backends
def test_the_public_task_keeps_provider_urls_and_adds_ours(client, completed):
    result = client.get(f"/api/tasks/{completed}").json["result"]
    ours = f"http://localhost/api/tasks/{completed}/media"
    assert result["videoUrl"] == "https://provider.example/v.mp4"
    assert result["media"] == {"videoUrl": f"{ours}/video.mp4", "lastFrameUrl": f"{ours}/last-frame.png"}
    [done] = [e for e in client.get(f"/api/tasks/{completed}/events").json["events"] if e["status"] == "completed"]
    assert done["data"]["media"]["videoUrl"] == f"{ours}/video.mp4"
    assert client.get(result["media"]["videoUrl"].removeprefix("http://localhost")).get_data() == MP4


@both_backends
def test_media_gone_from_the_store_is_404(app, client, completed):
    app.extensions["media"].delete_task(completed)
    assert client.get(f"/api/tasks/{completed}/media/video.mp4").status_code == 404

