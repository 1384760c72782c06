"""Safe to expose: what reads or spends needs a key or a login, on by default, over HTTP against gunicorn."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from dev import dbaccess
from settings import ROOT
from tests.conftest import AUTH, BACKENDS, CLIENT_KEY, DASHBOARD, SECRETS, USER, VIDEO, db_config

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("backend", BACKENDS, indirect=True)]  # on both stores
SECOND_KEY = "second-client-key-abcdefgh"


def start(env: dict) -> subprocess.CompletedProcess:
    """`create_app()` as gunicorn would run it, with exactly `env`; it exits at once if it refuses to start."""
    code = "from app import create_app; create_app(); print('started')"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ.get("PATH", ""), **env})


def test_the_user_api_needs_a_client_key(web):
    app = web(CLIENT_API_KEYS=f"{CLIENT_KEY}, {SECOND_KEY}")
    url = f"{app.url}/api/video/generate"
    for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789abc"}, AUTH, DASHBOARD,
                    {"Authorization": CLIENT_KEY}):
        answer = requests.post(url, json={"prompt": "a cat"}, headers=headers, timeout=10)
        assert answer.status_code == 401 and answer.json()["success"] is False, headers
        assert answer.headers["WWW-Authenticate"].lower().startswith("bearer")
    assert app.rows() == {}
    for key in (CLIENT_KEY, SECOND_KEY):
        answer = requests.post(url, json={"prompt": "a cat"}, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert answer.status_code == 201
    task_id = answer.json()["taskId"]
    for path in (f"/api/tasks/{task_id}", f"/api/tasks/{task_id}/events"):
        assert requests.get(app.url + path, timeout=10).status_code == 401
        assert requests.get(app.url + path, headers=USER, timeout=10).status_code == 200


def test_the_dashboard_needs_its_login(web):
    app = web()
    task_id = app.create()
    for path in ("/", f"/tasks/{task_id}", "/dashboard-static/dashboard.css"):
        refused = requests.get(app.url + path, timeout=10)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Basic")
        wrong = requests.get(app.url + path, auth=("admin", "not-the-password-at-all"), timeout=10)
        assert wrong.status_code == 401
        assert requests.get(app.url + path, headers=DASHBOARD, timeout=10).status_code == 200
    assert requests.get(app.url + "/", headers=USER, timeout=10).status_code == 401  # a client key is not a login


def test_healthz_is_open_and_shows_nothing(web):
    answer = requests.get(web().url + "/healthz", timeout=10)
    assert answer.status_code == 200 and answer.json() == {"status": "ok"}


def test_a_cross_site_form_post_spends_nothing(web):
    """A web page can make a browser send a text/plain or form post with the user's credentials; it is refused."""
    app = web()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        answer = requests.post(f"{app.url}/api/video/generate", data='{"prompt": "free video"}',
                               headers={**USER, "Content-Type": content_type}, timeout=10)
        assert answer.status_code == 415, content_type
    assert app.rows() == {}


def test_every_answer_carries_the_security_headers(web):
    app = web()
    task_id = app.create()
    for path, headers in (("/", DASHBOARD), (f"/tasks/{task_id}", DASHBOARD), (f"/api/tasks/{task_id}", USER),
                          ("/healthz", {}), ("/api/tasks/nope", {})):
        answer = requests.get(app.url + path, headers=headers, timeout=10)
        policy = answer.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy and "script-src" not in policy
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["X-Frame-Options"] == "DENY"


def test_a_result_url_that_is_not_http_is_never_a_link(web):
    app = web()
    task_id = app.create()
    claimed = requests.post(f"{app.url}/api/{VIDEO}/claimPendingTasks", json={}, headers=AUTH, timeout=10).json()
    attempt = claimed["tasks"][0]["attempt"]
    evil = "javascript:alert(document.cookie)"
    assert app.report(task_id, "completed", attempt=attempt,
                      data={"videoUrl": evil, "imageUrls": ["data:text/html,<script>x</script>", "https://ok.example/a.png"]}
                      ).status_code == 200
    page = requests.get(f"{app.url}/tasks/{task_id}", headers=DASHBOARD, timeout=10).text
    assert 'href="javascript:' not in page and 'src="javascript:' not in page and 'src="data:' not in page
    assert '<img src="https://ok.example/a.png"' in page
    assert "<script>x</script>" not in page  # shown only as escaped JSON text


@pytest.mark.parametrize("env, line", [
    ({"INTERNAL_API_TOKEN": SECRETS["INTERNAL_API_TOKEN"], "DASHBOARD_PASSWORD": SECRETS["DASHBOARD_PASSWORD"]},
     "config error: missing required setting: set CLIENT_API_KEYS (comma-separated keys of at least 16 characters), "
     "or ALLOW_UNAUTHENTICATED=1 to leave the user API open"),
    ({"INTERNAL_API_TOKEN": SECRETS["INTERNAL_API_TOKEN"], "CLIENT_API_KEYS": CLIENT_KEY},
     "config error: missing required setting: set DASHBOARD_PASSWORD (at least 16 characters), or "
     "ALLOW_UNAUTHENTICATED=1 to leave the dashboard open"),
    ({**SECRETS, "CLIENT_API_KEYS": f"{CLIENT_KEY},short"},
     "config error: each of CLIENT_API_KEYS must be at least 16"),
    ({**SECRETS, "DASHBOARD_PASSWORD": "changeme"}, "config error: DASHBOARD_PASSWORD must be at least 16"),
    ({**SECRETS, "INTERNAL_API_TOKEN": "t"}, "config error: INTERNAL_API_TOKEN must be at least 16"),
    ({**SECRETS, "INTERNAL_API_TOKEN": " " * 20}, "config error: INTERNAL_API_TOKEN must be at least 16"),
], ids=["no client keys", "no dashboard password", "a short key", "a short password", "a short token",
        "a blank token"])
def test_the_web_process_refuses_to_start_unprotected(db_target, env, line):
    result = start({**env, **db_config(db_target)})
    assert result.returncode == 2, result.stdout
    assert result.stderr.strip().splitlines()[0].startswith(line), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not made_a_database(db_target)


def made_a_database(target: str) -> bool:
    """The SQLite file, or any table in the PostgreSQL schema."""
    return bool(dbaccess.tables(target)) if dbaccess.is_postgres(target) else Path(target).exists()


def test_allow_unauthenticated_opens_only_what_is_unset_and_says_so(web, db_target):
    result = start({"INTERNAL_API_TOKEN": SECRETS["INTERNAL_API_TOKEN"], "ALLOW_UNAUTHENTICATED": "1",
                    "DASHBOARD_PASSWORD": SECRETS["DASHBOARD_PASSWORD"], **db_config(db_target)})
    assert result.returncode == 0 and "started" in result.stdout
    assert "the user API is open to anyone" in result.stderr and "dashboard is open" not in result.stderr

    app = web(CLIENT_API_KEYS="", ALLOW_UNAUTHENTICATED="1")
    assert requests.post(f"{app.url}/api/video/generate", json={"prompt": "a cat"}, timeout=10).status_code == 201
    assert requests.get(app.url + "/", timeout=10).status_code == 401  # its password is set: still closed


def test_no_secret_reaches_the_logs(web, tmp_path):
    app = web()
    app.create()
    requests.post(f"{app.url}/api/video/generate", json={"prompt": "x"},
                  headers={"Authorization": "Bearer a-guessed-key-that-is-wrong"}, timeout=10)
    requests.get(app.url + "/", headers=DASHBOARD, timeout=10)
    log = (tmp_path / "gunicorn.log").read_text()
    for secret in (*SECRETS.values(), "a-guessed-key-that-is-wrong"):
        assert secret not in log
