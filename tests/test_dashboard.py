"""The dashboard: server-rendered pages over a real database, and a real browser (Debian's Chromium)."""

import os
import re
import shutil
import struct
import time
import zlib
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from dev import dbaccess
from tests.conftest import (
    BACKENDS,
    DASHBOARD,
    DASHBOARD_LOGIN,
    IMAGE,
    TABLE,
    VIDEO,
    LoopbackHTTP,
    QuietHandler,
    sqlite_only,
)

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)  # the same assertions on both stores

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
STATUSES = ("pending", "queued", "processing", "completed", "failed")


def png(width=8, height=6, rgb=(200, 90, 40)) -> bytes:
    """A real PNG image: what a provider's media URL serves."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@contextmanager
def image_server():
    """An HTTP server on 127.0.0.1 answering every GET with png(); yields its base URL."""
    class Handler(QuietHandler):
        def do_GET(self):
            body = png()
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = LoopbackHTTP(Handler)
    try:
        yield server.url
    finally:
        server.close()


def populate(tasks):
    """Tasks in every status in both integrations, with a finished result and a failure to show."""
    spread = {VIDEO: [3, 1, 2, 4, 2], IMAGE: [1, 2, 1, 3, 1]}
    for namespace, numbers in spread.items():
        for status, count in zip(STATUSES, numbers, strict=True):
            for _ in range(count):
                tasks.put(namespace, status=status, attempts=0 if status == "pending" else 1,
                          started_at=int(time.time()) - 5 if status != "pending" else None)
    done = tasks.create(VIDEO, prompt="a lighthouse in a storm")
    tasks.report(done, "queued")
    tasks.report(done, "processing", attempt=1, taskId="cgt-1234")
    tasks.report(done, "completed", attempt=1, taskId="cgt-1234",
                 data={"videoUrl": "https://example.invalid/v.mp4"})
    broken = tasks.create(IMAGE, prompt="a broken mirror")
    tasks.report(broken, "queued", IMAGE)
    tasks.report(broken, "failed", IMAGE, attempt=1, error="Nano Banana 500: fake failure")
    return done, broken


def db_counts(target):
    return {ns: {r["status"]: r["n"] for r in dbaccess.query(
                target, f"SELECT status, COUNT(*) AS n FROM {TABLE[ns]} GROUP BY status")}
            for ns in (VIDEO, IMAGE)}


def test_dashboard_counts_and_rows(client, tasks, db_target):
    populate(tasks)
    html = client.get("/").get_data(as_text=True)
    counts = db_counts(db_target)
    for ns, short in ((VIDEO, "video"), (IMAGE, "image")):
        for status in STATUSES:
            cell = re.search(rf'data-count="{short}-{status}"><a[^>]*>(\d+)<', html).group(1)
            assert int(cell) == counts[ns].get(status, 0)
    assert html.count("data-task-id=") == sum(sum(c.values()) for c in counts.values())
    assert '<meta http-equiv="refresh"' in html


def test_dashboard_filters(client, tasks):
    populate(tasks)
    failed = client.get("/?status=failed").get_data(as_text=True)
    assert set(re.findall(r'data-status="(\w+)"', failed)) == {"failed"}
    images = client.get("/?integration=image").get_data(as_text=True)
    assert images.count("data-task-id=") == 9
    assert client.get("/?status=done").status_code == 400
    assert client.get("/?integration=audio").status_code == 400


def test_task_page_shows_request_result_timeline_and_temporal_link(client, tasks):
    done, broken = populate(tasks)
    html = client.get(f"/tasks/{done}").get_data(as_text=True)
    assert "a lighthouse in a storm" in html
    assert '<video src="https://example.invalid/v.mp4"' in html
    assert re.findall(r'<tr data-status="(\w+)">', html) == ["pending", "queued", "processing", "completed"]
    assert (f'href="http://127.0.0.1:8233/namespaces/default/workflows/fangzhouVideoGeneration%3A{done}"'
            in html)
    assert "Nano Banana 500: fake failure" in client.get(f"/tasks/{broken}").get_data(as_text=True)
    assert client.get("/tasks/unknown").status_code == 404


def test_dashboard_is_read_only(client, tasks, db_target):
    from tests.conftest import snapshot
    populate(tasks)
    before = snapshot(db_target)
    for url in ("/", "/?status=failed", "/?integration=video"):
        client.get(url)
    assert snapshot(db_target) == before
    assert client.post("/").status_code == 405


@sqlite_only("SQLite's EXPLAIN QUERY PLAN of the statements it traces (sqlite3's trace callback)")
def test_counts_and_chart_read_no_task_table_or_event_scan(client, tasks):
    """The page's cost follows the page, not the table: every statement it runs is an index search."""
    from web import db

    populate(tasks)
    conn = db.get_db()  # the connection this thread's requests use (pytest-flask pushed the app's context)
    statements = []
    conn.set_trace_callback(statements.append)
    try:
        assert client.get("/").status_code == 200
    finally:
        conn.set_trace_callback(None)
    plan = [row[3] for sql in statements if sql.lstrip().upper().startswith("SELECT")
            for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
    scans = [line for line in plan if line.startswith(("SCAN video_tasks", "SCAN image_tasks", "SCAN task_events",
                                                       "SCAN task_minutes", "SCAN task_counts"))]
    assert plan and not scans, "\n".join(plan)


@sqlite_only("plants SQLite's statistics (sqlite_stat1) and reads SQLite's plans")
def test_recent_tasks_stay_on_their_index_after_analyze(client, tasks):
    """With the statistics of a 100,000-task table (ANALYZE), the list still reads each status's newest tasks
    from (status, created_at) instead of sorting every task of the status (126 ms a page at 1M tasks)."""
    from web import db, task_store

    populate(tasks)
    conn = db.get_db()
    conn.execute("ANALYZE")
    conn.execute("DELETE FROM sqlite_stat1 WHERE tbl IN ('video_tasks', 'image_tasks')")
    for table in TABLE.values():
        conn.executemany("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES (?, ?, ?)", [
            (table, f"{table}_retry_due", "5609 2805 2805"),
            (table, f"{table}_status_attempts", "100000 20000 14286 12500"),
            (table, f"{table}_status_started", "100000 20000 20000 14286"),
            (table, f"{table}_status_created", "100000 20000 1"),
            (table, f"sqlite_autoindex_{table}_1", "100000 1")])
    conn.execute("ANALYZE sqlite_schema")  # load them
    statements = []
    conn.set_trace_callback(statements.append)
    try:
        assert client.get("/").status_code == 200
    finally:
        conn.set_trace_callback(None)
    plan = [row[3] for sql in statements if sql.lstrip().upper().startswith("SELECT")
            for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
    used = [line for line in plan if line.startswith(("SEARCH video_tasks", "SEARCH image_tasks"))]
    on_index = [line for line in used if "_status_created (status=? AND created_at>?)" in line]
    assert len(used) == len(on_index) == 2 * len(task_store.STATUSES), "\n".join(plan)


def test_counts_follow_every_write(client, tasks, db_target):
    """task_counts is kept by triggers: creates, transitions, an operator's SQL and deletes all show."""
    populate(tasks)
    dbaccess.execute(db_target, "UPDATE video_tasks SET status = 'completed' WHERE status = 'processing'")
    dbaccess.execute(db_target, "UPDATE image_tasks SET status = 'cancelled' WHERE status = 'queued'")
    dbaccess.execute(db_target, "DELETE FROM image_tasks WHERE status = 'pending'")
    html = client.get("/").get_data(as_text=True)
    counts = db_counts(db_target)
    assert counts[IMAGE]["cancelled"] == 2
    for ns, short in ((VIDEO, "video"), (IMAGE, "image")):
        for status in (*STATUSES, "cancelled"):
            cell = re.search(rf'data-count="{short}-{status}"><a[^>]*>(\d+)<', html).group(1)
            assert int(cell) == counts[ns].get(status, 0), (short, status)


def test_chart_shows_this_hours_tasks_per_minute(client, tasks):
    for n in range(3):
        tasks.create(VIDEO, prompt=f"video {n}")
    populate(tasks)  # 20 tasks put in a status (created too), then 1 video completed and 1 image failed
    with_image = client.get("/").get_data(as_text=True)
    bars = re.findall(r'<rect class="bar (\w+)" data-kind="\w+" data-minute="(\d+)" data-n="(\d+)"', with_image)
    by_kind = {}
    for kind, _, n in bars:
        by_kind[kind] = by_kind.get(kind, 0) + int(n)
    assert by_kind == {"created": 3 + 20 + 2, "completed": 1, "failed": 1}
    assert re.search(r'data-total="created">created 25<', with_image)
    assert '<svg viewBox="0 0 776 150"' in with_image
    only_images = client.get("/?integration=image").get_data(as_text=True)
    assert re.search(r'data-total="created">created 9<', only_images)
    assert re.search(r'data-total="completed">completed 0<', only_images)


def test_chart_ignores_retries_and_old_minutes(client, tasks, db_target):
    """Created counts a task's first event only (an operator's retry is not a new task); an hour ago is gone."""
    task_id = tasks.put(VIDEO, status="failed", attempts=1, retryable=False)
    assert client.post(f"/tasks/{task_id}/retry", data={"csrf_token": token(client)}).status_code == 303
    dbaccess.execute(db_target, "INSERT INTO task_events (namespace, task_id, status, attempt, created_at) "
                                "VALUES (?, 'old', 'completed', 1, ?)", (VIDEO, time.time() - 3700))
    html = client.get("/").get_data(as_text=True)
    assert re.search(r'data-total="created">created 1<', html)
    assert re.search(r'data-total="completed">completed 0<', html)


def test_task_list_shows_prompt_escaped_and_truncated(client, tasks):
    tasks.create(IMAGE, prompt="<script>alert(1)</script> a red fox")
    tasks.create(VIDEO, prompt="x" * 300)
    html = client.get("/").get_data(as_text=True)
    assert '<div class="prompt">&lt;script&gt;alert(1)&lt;/script&gt; a red fox</div>' in html
    assert "<script>" not in html
    assert f'<div class="prompt">{"x" * 119}…</div>' in html


def completed(tasks, namespace, data):
    task_id = tasks.create(namespace)
    tasks.report(task_id, "queued", namespace)
    assert tasks.report(task_id, "completed", namespace, attempt=1, data=data).status_code == 200
    return task_id


def thumbnail(html, task_id):
    row = re.search(rf'<tr data-task-id="{task_id}".*?</tr>', html, re.S).group(0)
    found = re.search(r'<td class="thumb">(.*?)</td>', row, re.S).group(1)
    return found


def test_thumbnails_prefer_our_copies_and_render_only_http_urls(client, tasks):
    stored_video = completed(tasks, VIDEO, {"videoUrl": "https://cdn.example/v.mp4",
                                            "lastFrameUrl": "https://cdn.example/f.png",
                                            "media": {"videoUrl": "video.mp4", "lastFrameUrl": "last-frame.png"}})
    stored_image = completed(tasks, IMAGE, {"imageUrls": ["https://cdn.example/i.png"],
                                            "media": {"imageUrls": ["image-1.png", "image-2.png"]}})
    provider_frame = completed(tasks, VIDEO, {"videoUrl": "https://cdn.example/v.mp4",
                                              "lastFrameUrl": "https://cdn.example/f.png"})
    provider_video = completed(tasks, VIDEO, {"videoUrl": "https://cdn.example/v.mp4"})
    provider_image = completed(tasks, IMAGE, {"imageUrls": ["https://cdn.example/i.png"]})
    hostile = completed(tasks, IMAGE, {"imageUrls": ["javascript:alert(1)"], "lastFrameUrl": "data:image/png,x",
                                       "media": {"imageUrls": ["../../etc/passwd"], "lastFrameUrl": ".env"}})
    html = client.get("/").get_data(as_text=True)
    assert f'src="/dashboard/media/{stored_video}/last-frame.png" alt="preview" loading="lazy"' in thumbnail(
        html, stored_video)
    assert f'src="/dashboard/media/{stored_image}/image-1.png"' in thumbnail(html, stored_image)
    assert '<img src="https://cdn.example/f.png" alt="preview" loading="lazy"' in thumbnail(html, provider_frame)
    assert '<video src="https://cdn.example/v.mp4" preload="metadata" muted' in thumbnail(html, provider_video)
    assert '<img src="https://cdn.example/i.png"' in thumbnail(html, provider_image)
    assert thumbnail(html, hostile).strip() == ""
    page = client.get(f"/tasks/{stored_image}").get_data(as_text=True)
    assert f'<img src="/dashboard/media/{stored_image}/image-2.png" alt="stored copy" loading="lazy">' in page


def token(client):
    html = client.get("/").get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def test_retry_button_retries_a_failed_task(client, tasks):
    task_id = tasks.put(VIDEO, status="failed", attempts=5, retryable=False)
    html = client.get("/").get_data(as_text=True)
    assert f'data-retry="{task_id}"' in html
    answer = client.post(f"/tasks/{task_id}/retry", data={"csrf_token": token(client), "next": "/?status=failed"})
    assert answer.status_code == 303 and answer.headers["Location"] == "/?status=failed"
    assert tasks.row(task_id)["status"] == "pending"
    assert tasks.events(task_id)[-1]["error"] == "retried by an operator"
    shown = client.get("/?status=failed").get_data(as_text=True)
    assert f'class="flash ok" role="status">Task {task_id} is pending again' in shown
    assert "is pending again" not in client.get("/").get_data(as_text=True)  # a flash shows once

    again = client.post(f"/tasks/{task_id}/retry", data={"csrf_token": token(client)})
    assert again.status_code == 303 and again.headers["Location"] == "/"
    assert "was not retried: Cannot retry a pending task" in client.get("/").get_data(as_text=True)
    assert client.post("/tasks/nope/retry", data={"csrf_token": token(client)}).status_code == 404


def test_cancel_button_cancels_pending_at_once_and_asks_an_active_tasks_workflow(client, tasks):
    pending = tasks.put(VIDEO, status="pending")
    queued = tasks.put(IMAGE, status="queued", attempts=1, started_at=int(time.time()))
    done = tasks.put(VIDEO, status="completed", attempts=1)
    html = client.get("/").get_data(as_text=True)
    csrf = token(client)  # the session's: the same for every form
    assert f'data-cancel="{pending}"' in html and f'data-cancel="{queued}"' in html
    assert f'data-cancel="{done}"' not in html

    answer = client.post(f"/tasks/{pending}/cancel", data={"csrf_token": csrf, "next": f"/tasks/{pending}"})
    assert answer.status_code == 303 and answer.headers["Location"] == f"/tasks/{pending}"
    assert tasks.row(pending)["status"] == "cancelled"
    assert [e["status"] for e in tasks.events(pending)][-1] == "cancelled"
    page = client.get(f"/tasks/{pending}").get_data(as_text=True)
    assert f"Task {pending} is cancelled." in page and 'id="task-status">cancelled<' in page

    client.post(f"/tasks/{queued}/cancel", data={"csrf_token": csrf})
    assert tasks.row(queued, IMAGE)["status"] == "queued" and tasks.row(queued, IMAGE)["cancel_requested_at"]
    html = client.get("/").get_data(as_text=True)
    assert f"Task {queued} is queued: its cancel is asked for" in html
    assert f'data-cancelling="{queued}"' in html and f'data-cancel="{queued}"' not in html

    client.post(f"/tasks/{done}/cancel", data={"csrf_token": csrf})
    assert "was not cancelled: Cannot cancel a completed task" in client.get("/").get_data(as_text=True)
    assert tasks.row(done)["status"] == "completed"
    assert client.post("/tasks/nope/cancel", data={"csrf_token": csrf}).status_code == 404


@pytest.mark.parametrize("action", ["retry", "cancel"])
def test_actions_refuse_a_post_without_the_sessions_token(client, tasks, db_target, action):
    from tests.conftest import snapshot

    task_id = tasks.put(VIDEO, status="failed", attempts=1, retryable=True)
    good = token(client)
    before = snapshot(db_target)
    url = f"/tasks/{task_id}/{action}"
    assert client.post(url).status_code == 400
    assert client.post(url, data={"csrf_token": ""}).status_code == 400
    assert client.post(url, data={"csrf_token": good[:-1] + ("A" if good[-1] != "A" else "B")}).status_code == 403
    assert client.post(url, data={"csrf_token": good}, headers={**DASHBOARD, "Origin": "https://evil.example"}
                       ).status_code == 403
    assert client.post(url, data={"csrf_token": good}, headers={**DASHBOARD, "Sec-Fetch-Site": "cross-site"}
                       ).status_code == 403
    assert client.post(url, json={"csrf_token": good}).status_code == 400  # not a form
    fresh = client.application.test_client()  # another browser: no session, so its own token does not fit
    assert fresh.post(url, data={"csrf_token": good}).status_code == 403
    assert client.post(url, data={"csrf_token": good}, headers={"Authorization": ""}).status_code == 401
    assert snapshot(db_target) == before


def test_next_only_leads_back_into_this_site(client, tasks):
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:alert(1)"):
        task_id = tasks.put(VIDEO, status="failed", attempts=1, retryable=False)
        answer = client.post(f"/tasks/{task_id}/retry", data={"csrf_token": token(client), "next": target})
        assert answer.status_code == 303 and answer.headers["Location"] == "/", target


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_dashboard_in_a_real_browser(web, tmp_path):
    """Prompt, a thumbnail that loaded, the chart's bars and a working cancel button, in Chromium."""
    from playwright.sync_api import sync_playwright

    from tests.conftest import Tasks

    app = web()
    stack = ExitStack()

    class HttpTasks(Tasks):  # the same set-up helper, over HTTP to gunicorn
        def __init__(self):
            super().__init__(None, app.db_path)

        def create(self, namespace=VIDEO, prompt="a cat on a skateboard"):
            return app.create(namespace, prompt)

        def report(self, task_id, status, namespace=VIDEO, **fields):
            return app.report(task_id, status, namespace, **fields)

    done, _ = populate(HttpTasks())
    cdn = stack.enter_context(image_server())  # the provider's media host, serving a real PNG
    fox = app.create(IMAGE, "a red fox in fresh snow")
    app.report(fox, "queued", IMAGE)
    app.report(fox, "completed", IMAGE, attempt=1, data={"imageUrls": [f"{cdn}/fox.png"]})
    boat = app.create(VIDEO, "a paper boat on a puddle")  # pending: cancelled at once
    counts = db_counts(app.db_path)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 900}, http_credentials=dict(
            zip(("username", "password"), DASHBOARD_LOGIN, strict=True)))
        refused = []  # anything the Content-Security-Policy blocked
        page.on("console", lambda message: refused.append(message.text) if "Content Security Policy" in message.text
                else None)
        page.goto(app.url + "/")
        assert page.eval_on_selector("header", "e => getComputedStyle(e).backgroundColor") == "rgb(29, 35, 48)"
        for ns, short in ((VIDEO, "video"), (IMAGE, "image")):
            for status in STATUSES:
                shown = page.inner_text(f'[data-count="{short}-{status}"]')
                assert int(shown) == counts[ns].get(status, 0), (short, status)
        assert page.locator("#recent tr[data-task-id]").count() == sum(sum(c.values()) for c in counts.values())
        assert page.locator("#recent .badge.failed").count() == counts[VIDEO]["failed"] + counts[IMAGE]["failed"]

        assert page.inner_text(f'tr[data-task-id="{fox}"] .prompt') == "a red fox in fresh snow"
        thumb = page.locator(f'tr[data-task-id="{fox}"] td.thumb img')
        thumb.scroll_into_view_if_needed()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle(),
                               timeout=10_000)
        assert thumb.evaluate("img => img.naturalWidth") == 8

        created = page.locator("#chart svg rect.bar.created").evaluate_all(
            "bars => bars.map(b => Number(b.dataset.n))")
        assert created and sum(created) == sum(sum(c.values()) for c in counts.values())
        assert page.locator("#chart svg rect.bar.completed").count() >= 1
        assert page.locator("#chart svg rect.bar").first.bounding_box()["height"] > 0
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

        page.click(f'[data-cancel="{boat}"]')
        page.wait_for_selector(f'#recent tr[data-task-id="{boat}"][data-status="cancelled"]', timeout=10_000)
        assert page.inner_text(".flash.ok") == f"Task {boat} is cancelled."
        assert page.locator(f'[data-cancel="{boat}"]').count() == 0
        assert app.task(boat)["status"] == "cancelled"
        page.goto(app.url + "/")

        page.click(f'a[href="/tasks/{done}"]')
        page.wait_for_selector("#timeline")
        assert page.inner_text("#task-status") == "completed"
        statuses = page.locator("#timeline tr[data-status]").evaluate_all("rows => rows.map(r => r.dataset.status)")
        assert statuses == ["pending", "queued", "processing", "completed"]
        assert page.get_attribute("#temporal-link", "href").endswith(f"/workflows/fangzhouVideoGeneration%3A{done}")
        page.screenshot(path=str(tmp_path / "task.png"), full_page=True)
        browser.close()
    stack.close()
    assert refused == []
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
    if os.environ.get("UPDATE_SCREENSHOTS"):
        docs = Path(__file__).resolve().parent.parent / "docs"
        shutil.copy(tmp_path / "dashboard.png", docs / "dashboard.png")
        shutil.copy(tmp_path / "task.png", docs / "task.png")
