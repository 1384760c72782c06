"""Behind PgBouncer in transaction mode (a real one, dev/pgbouncer.py): DATABASE_DIRECT_URL.

In transaction mode each transaction of a client may run on another server connection, so what lives in a
session does not stay with the client: a LISTEN hears nothing, and a session advisory lock taken by one
client is taken again by another that lands on the same server connection. The pool's queries are
transactions and go through the pooler; the listener and the prune lock connect to DATABASE_DIRECT_URL.
The pooler here has one server connection, so every client shares one server session: what the tests show
is what happens in production whenever two clients meet on one.
"""

from __future__ import annotations

import logging
import secrets
import time

import pytest

from dev import dbaccess, pgbouncer
from tests.conftest import AUTH, REPORT, SECRETS, USER, VIDEO
from web import pg, pg_wakeup
from web.retention import PeriodicPrune

pytestmark = [pytest.mark.parametrize("backend", ["postgres"], indirect=True),
              pytest.mark.skipif(pgbouncer.find() is None, reason="pgbouncer not installed (.ci/run installs it)")]
DAY = 86_400.0


@pytest.fixture
def role(pg_server, pg_url):
    """A login role whose sessions see the test's fresh schema (set on the role: PgBouncer does not pass
    the `options` startup parameter), and its direct URL; the role is dropped afterwards."""
    admin, _ = pg_server
    schema = pg_url.rpartition("search_path%3D")[2]
    name, password = f"r_{secrets.token_hex(5)}", secrets.token_hex(12)
    dbaccess.execute(admin, f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
    dbaccess.execute(admin, f"ALTER ROLE {name} SET search_path = {schema}")
    dbaccess.execute(admin, f"GRANT ALL ON SCHEMA {schema} TO {name}")
    server = admin.split("@", 1)[1].split("/", 1)[0]
    host, port = server.rsplit(":", 1)
    try:
        yield {"name": name, "password": password, "host": host, "port": int(port),
               "direct": f"postgresql://{name}:{password}@{server}/postgres"}
    finally:
        dbaccess.close(f"postgresql://{name}:{password}@{server}/postgres")
        dbaccess.execute(admin, f"DROP OWNED BY {name} CASCADE")
        dbaccess.execute(admin, f"DROP ROLE {name}")


@pytest.fixture
def bounced(role):
    """The role's URL through PgBouncer in transaction mode (one server connection)."""
    with pgbouncer.bouncer(role["host"], role["port"], "postgres", role["name"], role["password"]) as url:
        yield url
        pg.close_pools(url)
        pg.use_direct(url, None)


def make_app(database_url: str, direct: str | None):
    from app import create_app

    settings = {"DATABASE_URL": database_url, **SECRETS}
    if direct:
        settings["DATABASE_DIRECT_URL"] = direct
    made = create_app(settings)
    made.config["TESTING"] = True
    return made


def test_through_the_pooler_alone_a_listener_hears_nothing(role, bounced):
    """Why the setting exists: a LISTEN made through the pooler, and a notify sent through it, never meet."""
    make_app(role["direct"], None)  # the schema, created at the current version
    listener = pg_wakeup.Listener(bounced)
    try:
        assert listener.listening.wait(5)
        seen = listener.mark(VIDEO)
        dbaccess.execute(bounced, f"SELECT pg_notify('{pg_wakeup.CHANNEL}', '{VIDEO}')")
        assert not listener.wait(VIDEO, seen, timeout=2)
        assert listener.received == 0
    finally:
        listener.close()


def test_a_long_poll_behind_the_pooler_is_woken_through_the_direct_url(role, bounced):
    """The app's queries go through the pooler and its listener connects directly: a create's commit wakes
    a waiting long poll by notification, not by the 1 s fallback re-check."""
    make_app(role["direct"], None)
    app = make_app(bounced, role["direct"])
    assert pg.direct_url(bounced) == role["direct"]
    client = app.test_client()
    listener = pg_wakeup.listener(bounced, pg.direct_url(bounced))
    assert listener.direct == role["direct"] and listener.listening.wait(5)
    received = listener.received
    seen = listener.mark(VIDEO)
    created = client.post("/api/video/generate", json={"prompt": "through the pooler"},
                          headers=USER)
    assert created.status_code == 201, created.json
    assert listener.wait(VIDEO, seen, timeout=5), "the create's notify never reached the listener"
    assert listener.received > received
    answer = client.get(f"/api/{VIDEO}/fetchPendingTasks?waitMs=1000", headers=AUTH).json
    assert [t["id"] for t in answer["tasks"]] == [created.json["taskId"]]


def test_behind_the_pooler_only_one_pruner_holds_the_prune_lock(role, bounced):
    """Two processes' pruners through the pooler: the lock is taken on a direct connection, so the second
    is refused. Through the pooler alone both would hold it (one server session, and the lock is re-entrant)."""
    make_app(role["direct"], None)
    app = make_app(bounced, role["direct"])
    tables = list(app.extensions["task_tables"].values())
    first, second = (PeriodicPrune(bounced, tables, 7 * DAY, interval_seconds=60) for _ in range(2))
    try:
        assert first._hold_lock() and not second._hold_lock()
        first._release()
        deadline = time.monotonic() + 5
        while not second._hold_lock():  # the server lets go of it with the connection
            assert time.monotonic() < deadline, "the lock was not free once its holder let it go"
            time.sleep(0.05)
    finally:
        first._release()
        second._release()

    pg.use_direct(bounced, None)  # as before DATABASE_DIRECT_URL: the lock through the pooler
    first, second = (PeriodicPrune(bounced, tables, 7 * DAY, interval_seconds=60) for _ in range(2))
    try:
        assert first._hold_lock() and second._hold_lock()  # both "hold" it: the bug the setting avoids
    finally:
        first._release()
        second._release()


def test_a_direct_url_to_another_schema_or_nowhere_is_refused_at_start(role, bounced, pg_server):
    """A listener on another database hears none of ours, and a prune lock taken elsewhere excludes nobody:
    the app does not start, and says which setting is wrong."""
    from dev.stack import free_port
    from web.db import SchemaError

    make_app(role["direct"], None)
    admin, _ = pg_server  # the same server, but the public schema: not where the tasks are
    with pytest.raises(SchemaError, match="DATABASE_DIRECT_URL reaches database 'postgres', schema 'public'"):
        make_app(bounced, admin)
    nowhere = f"postgresql://{role['name']}:{role['password']}@127.0.0.1:{free_port()}/postgres"
    with pytest.raises(SchemaError, match="DATABASE_DIRECT_URL: cannot connect"):
        make_app(bounced, nowhere)
    # Another transaction pooler: the same database and schema, but a LISTEN through it hears nothing.
    with pgbouncer.bouncer(role["host"], role["port"], "postgres", role["name"], role["password"]) as other:
        with pytest.raises(SchemaError, match="DATABASE_DIRECT_URL did not hear"):
            make_app(bounced, other)
    assert not pg.pooled(bounced)  # a refused direct URL is forgotten
    make_app(bounced, bounced)  # the same URL names no pooler: nothing changes
    assert not pg.pooled(bounced)
    assert make_app(bounced, role["direct"]) is not None and pg.direct_url(bounced) == role["direct"]


def test_a_start_behind_the_pooler_warns_until_the_role_sets_the_timeouts(role, bounced, pg_server, caplog):
    """Behind the pooler no connection sets lock_timeout and idle_in_transaction_session_timeout (they would land
    on whichever server connection ran them): the start says so, with the fix, until the role sets them."""
    make_app(role["direct"], None)
    with caplog.at_level(logging.WARNING, logger="web.db"):
        make_app(bounced, role["direct"])
    [warning] = [r for r in caplog.records if "no connection sets its timeouts" in r.getMessage()]
    assert warning.fields["unset"] == "lock_timeout,idle_in_transaction_session_timeout"
    assert "ALTER ROLE <role> SET lock_timeout = '5s'" in warning.fields["fix"]
    admin, _ = pg_server
    for name, value in pg.session_timeouts().items():
        dbaccess.execute(admin, f"ALTER ROLE {role['name']} SET {name} = '{value}'")
    caplog.clear()
    with pgbouncer.bouncer(role["host"], role["port"], "postgres", role["name"], role["password"]) as fresh:
        with caplog.at_level(logging.WARNING, logger="web.db"):
            make_app(fresh, role["direct"])  # (a fresh pooler: its server connection logs in with the settings)
        pg.close_pools(fresh)
        pg.use_direct(fresh, None)
    assert not [r for r in caplog.records if "no connection sets its timeouts" in r.getMessage()]


def test_many_clients_through_the_pooler_share_its_server_connections_without_prepared_statements(role):
    """psycopg prepares a statement it has run five times on a connection, under names (_pg3_0, ...) that every
    client uses: through a transaction pooler two clients meet on one server connection ("prepared statement
    already exists", or "does not exist"). Behind a pooler the app prepares nothing: 4 threads x 25 creates,
    claims, reports and refused stale reports through two server connections, every answer as it should be."""
    import threading

    make_app(role["direct"], None)
    with pgbouncer.bouncer(role["host"], role["port"], "postgres", role["name"], role["password"],
                           pool_size=2) as url:
        try:
            app = make_app(url, role["direct"])
            problems: list[str] = []

            def traffic(n: int) -> None:
                client = app.test_client()
                for i in range(25):
                    made = client.post("/api/video/generate", json={"prompt": f"client {n} task {i}"}, headers=USER)
                    claimed = client.post(f"/api/{VIDEO}/claimPendingTasks", json={"limit": 1}, headers=AUTH)
                    tasks = claimed.json.get("tasks") if claimed.status_code == 200 else None
                    if made.status_code != 201 or tasks is None:
                        problems.append(f"create {made.status_code} {made.json}; claim {claimed.status_code}")
                        continue
                    for task in tasks:  # the claim's own attempt is taken; another is refused (409)
                        body = {"apiCallId": task["id"], "status": "processing", "taskId": f"job-{n}-{i}"}
                        answers = [client.post(f"/api/{VIDEO}/{REPORT[VIDEO]}", json={**body, "attempt": attempt},
                                               headers=AUTH).status_code
                                   for attempt in (task["attempt"], task["attempt"] + 1)]
                        if answers != [200, 409]:
                            problems.append(f"reports {answers}")

            threads = [threading.Thread(target=traffic, args=(n,)) for n in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
            assert problems == []
            assert dbaccess.query(role["direct"], "SELECT count(*) AS n FROM video_tasks") == [{"n": 100}]
        finally:
            pg.close_pools(url)
            pg.use_direct(url, None)
