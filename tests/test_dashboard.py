"""The dashboard: server-rendered pages over a real database, and a real browser (Debian's Chromium)."""

import os
import re
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from tests.conftest import DASHBOARD_LOGIN, IMAGE, TABLE, VIDEO

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
STATUSES = ("pending", "queued", "processing", "completed", "failed")


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


def db_counts(db_path):
    with sqlite3.connect(db_path) as conn:
        return {ns: dict(conn.execute(f"SELECT status, COUNT(*) FROM {TABLE[ns]} GROUP BY status").fetchall())
                for ns in (VIDEO, IMAGE)}


def test_dashboard_counts_and_rows(client, tasks, db_path):
    populate(tasks)
    html = client.get("/").get_data(as_text=True)
    counts = db_counts(db_path)
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


def test_dashboard_is_read_only(client, tasks, db_path):
    from tests.conftest import snapshot
    populate(tasks)
    before = snapshot(db_path)
    for url in ("/", "/?status=failed", "/?integration=video"):
        client.get(url)
    assert snapshot(db_path) == before
    assert client.post("/").status_code == 405


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_dashboard_in_a_real_browser(web, tmp_path):
    from playwright.sync_api import sync_playwright

    from tests.conftest import Tasks

    app = web()

    class HttpTasks(Tasks):  # the same set-up helper, over HTTP to gunicorn
        def __init__(self):
            super().__init__(None, app.db_path)

        def create(self, namespace=VIDEO, prompt="a cat on a skateboard"):
            return app.create(namespace, prompt)

        def report(self, task_id, status, namespace=VIDEO, **fields):
            return app.report(task_id, status, namespace, **fields)

    done, _ = populate(HttpTasks())
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
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

        page.click(f'a[href="/tasks/{done}"]')
        page.wait_for_selector("#timeline")
        assert page.inner_text("#task-status") == "completed"
        statuses = page.locator("#timeline tr[data-status]").evaluate_all("rows => rows.map(r => r.dataset.status)")
        assert statuses == ["pending", "queued", "processing", "completed"]
        assert page.get_attribute("#temporal-link", "href").endswith(f"/workflows/fangzhouVideoGeneration%3A{done}")
        page.screenshot(path=str(tmp_path / "task.png"), full_page=True)
        browser.close()
    assert refused == []
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
    if os.environ.get("UPDATE_SCREENSHOTS"):
        docs = Path(__file__).resolve().parent.parent / "docs"
        shutil.copy(tmp_path / "dashboard.png", docs / "dashboard.png")
        shutil.copy(tmp_path / "task.png", docs / "task.png")
