"""Fixtures: a fresh app on a temporary SQLite file per test (pytest-flask gives `client`).

A test module runs on both task-store backends with
`pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)`: its `app`, `tasks` and
`snapshot` then use a fresh PostgreSQL schema per test on one throwaway cluster the session starts
(dev/postgres.py; TEST_DATABASE_URL names an existing server instead), with the same assertions.
Rows are read through dev/dbaccess.py, which speaks both.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from flask.testing import FlaskClient

from app import create_app
from dev import dbaccess

TOKEN = "test-internal-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CLIENT_KEY = "test-client-key-0123456789"
USER = {"Authorization": f"Bearer {CLIENT_KEY}"}
DASHBOARD_LOGIN = ("admin", "test-dashboard-password")
DASHBOARD = {"Authorization": "Basic " + base64.b64encode(":".join(DASHBOARD_LOGIN).encode()).decode()}
SECRETS = {"INTERNAL_API_TOKEN": TOKEN, "CLIENT_API_KEYS": CLIENT_KEY, "DASHBOARD_PASSWORD": DASHBOARD_LOGIN[1]}
VIDEO = "fangzhouVideoGeneration"
IMAGE = "nanobanana2ImageGeneration"
REPORT = {VIDEO: "reportFangzhouVideoResult", IMAGE: "reportNanobanana2ImageResult"}
TABLE = {VIDEO: "video_tasks", IMAGE: "image_tasks"}


BACKENDS = ["sqlite", "postgres"]


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "app.db")


@pytest.fixture(scope="session")
def pg_server():
    """(admin URL, URL maker) of a PostgreSQL server for the session: TEST_DATABASE_URL, else a throwaway cluster."""
    from dev import postgres

    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        yield given, lambda schema: f"{given}{'&' if '?' in given else '?'}options=-csearch_path%3D{schema}"
        return
    if postgres.find_bin() is None:
        pytest.skip("PostgreSQL binaries not found (.ci/run installs them; or set TEST_DATABASE_URL)")
    with postgres.cluster() as cluster:
        yield cluster.url, lambda schema: cluster.url_for(schema=schema)


@contextlib.contextmanager
def fresh_schema(pg_server):
    """A URL whose connections see only a fresh, empty schema of their own (dropped when the block ends)."""
    from web import pg

    admin, url_for = pg_server
    schema = f"t_{secrets.token_hex(6)}"
    dbaccess.execute(admin, f"CREATE SCHEMA {schema}")
    url = url_for(schema)
    try:
        yield url
    finally:
        pg.close_pools(url)
        dbaccess.close(url)
        dbaccess.execute(admin, f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def pg_url(pg_server):
    """A fresh schema per test (fresh_schema), not a database: measured on this machine, create + migrate
    19.6 ms and drop 6.3 ms (median of 10), against 22.8 ms + 6.1 ms for CREATE DATABASE ... TEMPLATE,
    which also costs every connection a new handshake."""
    with fresh_schema(pg_server) as url:
        yield url


def db_config(target):
    """create_app settings that put an app on `target` (as db_target gives it)."""
    return {"DATABASE_URL": target} if dbaccess.is_postgres(target) else {"DATABASE_PATH": target}


@pytest.fixture(autouse=True)
def backend(request):
    """Which task store the test runs on: "sqlite" unless the module parametrizes it (BACKENDS), or
    module_backend's. Autouse, so a module's parametrization reaches every test in it. A test marked
    `sqlite_only` skips its PostgreSQL run, giving its reason."""
    if "module_backend" in request.fixturenames:
        found = request.getfixturevalue("module_backend")
    else:
        found = getattr(request, "param", "sqlite")
    only = request.node.get_closest_marker("sqlite_only")
    if only is not None and found != "sqlite":
        pytest.skip(f"SQLite only: {only.args[0]}")
    return found


both_backends = pytest.mark.parametrize("backend", BACKENDS, indirect=True)  # one test, on both stores


def sqlite_only(reason: str):
    """Mark a test of a module run on both backends as meaningful on SQLite alone; `reason` says why."""
    return pytest.mark.sqlite_only(reason)


def connect(target: str):
    """A task_store connection of its own to `target` (as db_target gives it), for calls made outside a request."""
    from web import db

    if dbaccess.is_postgres(target):
        from web import pg

        return pg.connect(target)
    return db.connect(target)


@pytest.fixture
def db_target(request, backend, db_path):
    """What the app runs on and the helpers read: the SQLite file's path, or the PostgreSQL schema's URL."""
    return request.getfixturevalue("pg_url") if backend == "postgres" else db_path


@pytest.fixture
def db_env(db_path, db_target):
    """The settings that put a process (gunicorn, every process of a Stack) on db_target: DATABASE_URL on
    PostgreSQL; none on SQLite, where each keeps its own file (a Stack in tmp_path: its app.db is db_path)."""
    return {} if db_target == db_path else {"DATABASE_URL": db_target}


@pytest.fixture(scope="module")
def module_backend(request):
    """The backend of a module whose stack lasts the module: parametrize it with
    `pytest.mark.parametrize("module_backend", BACKENDS, indirect=True, scope="module")`."""
    return getattr(request, "param", "sqlite")


@pytest.fixture(scope="module")
def module_db_env(request, module_backend):
    """db_env for a module-scoped stack: on PostgreSQL, a fresh schema that lasts the module."""
    if module_backend != "postgres":
        yield {}
        return
    with fresh_schema(request.getfixturevalue("pg_server")) as url:
        yield {"DATABASE_URL": url}


class SignedInClient(FlaskClient):
    """Like a real client, it signs in: the client key on user API paths, the dashboard login on its pages.

    A request that sets its own Authorization header (the internal token, a wrong key, "") keeps it.
    """

    def open(self, *args, **kwargs):
        path = args[0] if args and isinstance(args[0], str) else kwargs.get("path", "/")
        headers = dict(kwargs.pop("headers", None) or {})
        if "Authorization" not in headers:
            if path.startswith(("/api/video/", "/api/image/", "/api/tasks/")):
                headers.update(USER)
            elif path == "/" or path.startswith(("/?", "/tasks/", "/dashboard-static/")):
                headers.update(DASHBOARD)
        return super().open(*args, headers=headers, **kwargs)


@pytest.fixture
def app(db_path, db_target):
    # RETRY_BASE_SECONDS 0: a retryable failure is due at once, unless a test is about backoff.
    url = {"DATABASE_URL": db_target} if db_target != db_path else {}
    app = create_app({"DATABASE_PATH": db_path, **url, **SECRETS, "RETRY_BASE_SECONDS": 0,
                      "MAX_ATTEMPTS": 5, "STUCK_TIMEOUT_SECONDS": 300, "BATCH_SIZE": 10})
    app.config["TESTING"] = True
    app.test_client_class = SignedInClient
    return app


class Tasks:
    """Creates tasks through the user API, then puts them in a given state for a test."""

    def __init__(self, client, db_path):
        self.client = client
        self.db_path = db_path  # the SQLite path or the PostgreSQL URL (dev/dbaccess.py reads both)

    def create(self, namespace=VIDEO, prompt="a cat on a skateboard"):
        path = "/api/video/generate" if namespace == VIDEO else "/api/image/generate"
        response = self.client.post(path, json={"prompt": prompt})
        assert response.status_code == 201, response.json
        return response.json["taskId"]

    def put(self, namespace=VIDEO, *, status="pending", attempts=0, started_at=None,
            retryable=True, created_at=None, dispatched_at=None, retry_at=None):
        task_id = self.create(namespace)
        if retry_at is None and status == "failed" and retryable:
            retry_at = time.time() - 1  # due
        fields = {"status": status, "attempts": attempts, "started_at": started_at,
                  "retryable": int(retryable), "dispatched_at": dispatched_at, "retry_at": retry_at}
        if created_at is not None:
            fields["created_at"] = created_at
        sets = ", ".join(f"{k} = ?" for k in fields)
        dbaccess.execute(self.db_path, f"UPDATE {TABLE[namespace]} SET {sets} WHERE id = ?",
                         [*fields.values(), task_id])
        return task_id

    def row(self, task_id, namespace=VIDEO):
        rows = dbaccess.query(self.db_path, f"SELECT * FROM {TABLE[namespace]} WHERE id = ?", (task_id,))
        return rows[0] if rows else None

    def events(self, task_id):
        return dbaccess.query(self.db_path, "SELECT * FROM task_events WHERE task_id = ? ORDER BY id", (task_id,))

    def report(self, task_id, status, namespace=VIDEO, **fields):
        body = {"apiCallId": task_id, "status": status, **fields}
        return self.client.post(f"/api/{namespace}/{REPORT[namespace]}", json=body, headers=AUTH)

    def fetch(self, namespace=VIDEO, limit=None, headers=AUTH):
        query = "" if limit is None else f"?limit={limit}"
        return self.client.get(f"/api/{namespace}/fetchPendingTasks{query}", headers=headers)


@pytest.fixture
def tasks(client, db_target):
    return Tasks(client, db_target)


def snapshot(target):
    """Every row of every table: compared before and after to show nothing changed (`target`: as db_target)."""
    if not dbaccess.is_postgres(target):
        with sqlite3.connect(target) as conn:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            return {t: conn.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in tables}
    found = {}
    for table in dbaccess.tables(target):
        rows = dbaccess.query(target, f"SELECT * FROM {table}")
        found[table] = sorted((tuple(r.values()) for r in rows), key=repr)
    return found


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler for the tests' own HTTP servers: it logs nothing."""

    def log_message(self, *args):
        pass


class LoopbackHTTP:
    """A threaded HTTP server of `handler` on a free 127.0.0.1 port, serving from a thread of its own at once."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_until(predicate, timeout=10.0, interval=0.05, message="condition"):
    """Poll `predicate` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def temporal(tmp_path_factory):
    """One real Temporal dev server for the session; yields its host:port."""
    from dev.stack import temporal_server

    folder = tmp_path_factory.mktemp("temporal")
    with temporal_server(folder / "temporal.db", folder / "temporal.log") as address:
        yield address


@pytest.fixture
def web(tmp_path, db_path, db_target, db_env):
    """The web process under gunicorn (2 workers); yields a `Web` with its URL and a `Tasks`-like API."""
    from dev.stack import gunicorn

    started = []

    def start(**env):
        context = gunicorn(db_path, tmp_path / "gunicorn.log", workers=2,
                           env={**SECRETS, **db_env, "RETRY_BASE_SECONDS": "0",
                                **{k: str(v) for k, v in env.items()}})
        url = context.__enter__()
        started.append(context)
        return Web(url, db_target)

    yield start
    for context in reversed(started):
        context.__exit__(None, None, None)


class Web:
    """A running web process: create tasks and read them back over HTTP, rows from its database."""

    def __init__(self, url, db_path):
        import requests

        self.url = url
        self.db_path = db_path
        self.http = requests.Session()
        self.http.headers.update(USER)  # the internal calls below pass the internal token instead

    def create(self, namespace=VIDEO, prompt="a cat"):
        path = "/api/video/generate" if namespace == VIDEO else "/api/image/generate"
        response = self.http.post(self.url + path, json={"prompt": prompt}, timeout=10)
        assert response.status_code == 201, response.text
        return response.json()["taskId"]

    def task(self, task_id):
        return self.http.get(f"{self.url}/api/tasks/{task_id}", timeout=10).json()

    def report(self, task_id, status, namespace=VIDEO, **fields):
        return self.http.post(f"{self.url}/api/{namespace}/{REPORT[namespace]}", headers=AUTH, timeout=10,
                              json={"apiCallId": task_id, "status": status, **fields})

    def rows(self, namespace=VIDEO):
        return {r["id"]: r for r in dbaccess.query(self.db_path, f"SELECT * FROM {TABLE[namespace]}")}

    def events(self, status=None):
        rows = dbaccess.query(self.db_path, "SELECT * FROM task_events ORDER BY id")
        return [r for r in rows if status is None or r["status"] == status]


# The files that take longest (minutes each, measured in CI), started first: `make test` hands files to its two
# processes in collection order (--dist loadfile --no-loadscope-reorder; xdist would otherwise send files
# with the most tests first), so a long file collected last ran alone at the end.
LONGEST_FIRST = ("test_provider_outage.py", "test_chaos.py", "test_provider_grade.py", "test_workflows.py",
                 "test_openapi.py", "test_reconciler.py")


def pytest_collection_modifyitems(items):
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: the rest keep their order
