"""Many processors' long polls, clients that went away and slow clients, against gunicorn at its defaults.

The web process runs as `gunicorn.conf.py` sets it up (4 workers x 8 threads,
BufferingThreadWorker, a budget of waiting long polls per worker). Long polls
and slow clients are raw sockets driven by one asyncio loop in a thread, so a
hundred of them cost the test little; a user request is a new connection each time.
"""

from __future__ import annotations

import asyncio
import collections
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest
import requests

from dev import dbaccess
from dev.stack import free_port, gunicorn, gunicorn_command, stop, wait_for_http
from dev.stack import read_http_answer as read_answer
from settings import ROOT
from tests.conftest import AUTH, BACKENDS, IMAGE, SECRETS, TABLE, USER, VIDEO, wait_until

pytestmark = pytest.mark.slow

WAIT_MS = 30_000


def pytest_generate_tests(metafunc):
    """The tests against a web process run on both task stores (on PostgreSQL a wait is woken by
    LISTEN/NOTIFY, web/pg_wakeup.py), with the same assertions; the others touch no store of tasks."""
    if {"server", "db_env"} & set(metafunc.fixturenames):
        metafunc.parametrize("backend", BACKENDS, indirect=True)


@pytest.fixture
def server(tmp_path, db_path, db_env):
    """The web process at its default settings (gunicorn.conf.py: 4 workers, 8 threads each); yields its URL."""
    with gunicorn(db_path, tmp_path / "gunicorn.log", workers=4, env={**SECRETS, **db_env}) as url:
        yield url


class Loop:
    """An asyncio loop in a thread, for many sockets at once."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def spawn(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self):
        async def cancel_the_rest():
            rest = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        self.run(cancel_the_rest(), 10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def aio():
    loop = Loop()
    yield loop
    loop.close()


def request_bytes(url: str, method: str, path: str, body: dict | None = None) -> bytes:
    data = b"" if body is None else json.dumps(body).encode()
    head = [f"{method} {path} HTTP/1.1", f"Host: {url.removeprefix('http://')}", AUTH_LINE,
            "Content-Type: application/json", f"Content-Length: {len(data)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


AUTH_LINE = f"Authorization: {AUTH['Authorization']}"


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def waiting_polls(url: str) -> int:
    """Long polls waiting now, in all worker processes (the web_long_polls_waiting gauge)."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    return int(sum(float(v) for v in re.findall(r"^web_long_polls_waiting\{[^}]*\} (\S+)$", text, re.M)))


def create(url: str, prompt: str = "a cat") -> tuple[float, requests.Response]:
    """A user's create on a new connection: (seconds it took, the answer)."""
    began = time.monotonic()
    response = requests.post(f"{url}/api/video/generate", json={"prompt": prompt}, headers=USER, timeout=30)
    return time.monotonic() - began, response


def test_128_long_polls_never_starve_user_requests(server, aio, db_target):
    """64 processors' worth of long polls (one per integration each, waitMs 30 s, fetches and claims)
    stay in flight while users create tasks: every create is answered at once, every poll answers a
    task list (with its tasks, empty, or declined with `retryAfterMs`), and the work is claimed."""
    answers: collections.Counter = collections.Counter()
    problems: list[str] = []
    stopping = threading.Event()

    async def processor_poll(integration: str, n: int):
        """Like a processor's poll thread: wait for work, claim what a fetch found, honour a decline."""
        reader, writer = await asyncio.open_connection(*address(server))
        try:
            while not stopping.is_set():
                if n % 2:
                    path = f"/api/{integration}/fetchPendingTasks?limit=1&waitMs={WAIT_MS}"
                    writer.write(request_bytes(server, "GET", path))
                else:
                    writer.write(request_bytes(server, "POST", f"/api/{integration}/claimPendingTasks",
                                               {"waitMs": WAIT_MS}))
                n += 1
                status, answer = await read_answer(reader)
                if status != 200 or not isinstance(answer.get("tasks"), list):
                    problems.append(f"{status} {answer}")
                    return
                if answer.get("retryAfterMs"):
                    answers["declined"] += 1
                    assert answer["tasks"] == [] and WAIT_MS <= answer["retryAfterMs"] <= WAIT_MS * 1.5
                    # A processor waits that long (30 to 45 s here); these ask again sooner, on a new
                    # connection, to keep the server declining throughout (but never spinning).
                    writer.close()
                    await asyncio.sleep(min(answer["retryAfterMs"] / 1000, 2.0))
                    reader, writer = await asyncio.open_connection(*address(server))
                    continue
                answers["tasks" if answer["tasks"] else "empty"] += 1
                if answer["tasks"] and "attempt" not in answer["tasks"][0]:  # a fetch found work: claim it
                    writer.write(request_bytes(server, "POST", f"/api/{integration}/claimPendingTasks", {}))
                    status, answer = await read_answer(reader)
                    if status != 200:
                        problems.append(f"claim {status} {answer}")
        except Exception as exc:  # a broken poll is a failure of the test, reported below
            problems.append(f"{type(exc).__name__}: {exc}")
        finally:
            writer.close()

    polls = [aio.spawn(processor_poll(integration, n)) for n in range(64) for integration in (VIDEO, IMAGE)]
    try:
        wait_until(lambda: waiting_polls(server) >= 16, message="every worker's long-poll slots taken")
        time.sleep(1)  # the declined polls are back in their pause
        took, ids = [], []
        for n in range(40):
            seconds, response = create(server, f"user {n}")
            took.append(seconds)
            assert response.status_code == 201, response.text
            ids.append(response.json()["taskId"])
            time.sleep(0.05)
        # The polls holding the slots wake on each commit and claim: no task waits for a declined poll.
        wait_until(lambda: claimed(db_target, ids), timeout=5, message="every task claimed by a waiting poll")
    finally:
        stopping.set()
        for poll in polls:
            poll.cancel()
    assert max(took) < 2, sorted(took)[-5:]
    assert not problems, problems[:5]
    assert answers["declined"] > 0 and answers["tasks"] > 0, answers


def claimed(target: str, ids: list[str]) -> bool:
    marks = ",".join("?" * len(ids))
    return not dbaccess.query(target, f"SELECT COUNT(*) AS n FROM video_tasks WHERE id IN ({marks}) AND attempts = 0",
                              ids)[0]["n"]


def test_a_long_poll_whose_client_went_away_stops_waiting_at_once(server, aio):
    """Fill every worker's long-poll slots, then drop those clients: the slots (and their threads) are
    free again within a moment, so as many new polls can wait at once, not after the 30 s wait ends."""

    async def open_waiting_polls(count: int) -> list[asyncio.StreamWriter]:
        """Open polls until `count` of them wait on the server (a declined one answers at once: close it)."""
        waiting: list[asyncio.StreamWriter] = []
        for n in range(400):
            if len(waiting) == count:
                return waiting
            integration = (VIDEO, IMAGE)[n % 2]
            reader, writer = await asyncio.open_connection(*address(server))
            writer.write(request_bytes(server, "GET", f"/api/{integration}/fetchPendingTasks?waitMs={WAIT_MS}"))
            try:
                status, answer = await asyncio.wait_for(read_answer(reader), 0.3)
                assert status == 200 and answer["tasks"] == [] and answer["retryAfterMs"] > 0, answer
                writer.close()
            except TimeoutError:
                waiting.append(writer)  # no answer: it waits
        raise AssertionError(f"only {len(waiting)} polls got to wait")

    capacity = 4 * 4  # 4 workers, half of 8 threads each
    first = aio.run(open_waiting_polls(capacity))
    assert waiting_polls(server) == capacity

    async def drop(writers: list[asyncio.StreamWriter]):
        for writer in writers:
            writer.transport.abort()  # the processor died, or gave up (RST; a FIN counts as well)

    aio.run(drop(first))
    began = time.monotonic()
    wait_until(lambda: waiting_polls(server) == 0, timeout=5, interval=0.02, message="the slots freed")
    freed_in = time.monotonic() - began
    again = aio.run(open_waiting_polls(capacity))  # every slot can be taken again
    seconds, response = create(server)
    assert response.status_code == 201 and seconds < 2
    aio.run(drop(again))
    assert freed_in < 1, freed_in


def test_a_claim_whose_client_went_away_takes_no_task(server):
    """A processor killed while its claim waits: a task created right after stays pending for a live
    processor, never claimed for the dead one (it would sit `queued` until the stuck timeout). Five times,
    since the create lands within moments of the hang-up."""
    for n in range(5):
        with socket.create_connection(address(server), timeout=10) as sock:
            sock.sendall(request_bytes(server, "POST", f"/api/{VIDEO}/claimPendingTasks", {"waitMs": WAIT_MS}))
            wait_until(lambda: waiting_polls(server) == 1, interval=0.02, message="the claim waits")
        _, response = create(server, f"after a hang-up {n}")  # the socket is closed: its processor is gone
        assert response.status_code == 201, response.text
        wait_until(lambda: waiting_polls(server) == 0, timeout=5, interval=0.02, message="the wait ended")
        task_id = response.json()["taskId"]
        task = requests.get(f"{server}/api/tasks/{task_id}", headers=USER, timeout=10).json()
        assert (task["status"], task["attempts"]) == ("pending", 0), task
        cancelled = requests.post(f"{server}/api/tasks/{task_id}/cancel", headers=USER, timeout=10)
        assert cancelled.status_code == 200, cancelled.text  # out of the way of the next claim


def test_work_that_comes_due_by_the_clock_is_claimed_by_a_waiting_poll(server, db_target):
    """A retry whose backoff ends while a claim waits is claimed within a moment of coming due, though no
    commit wakes the wait (processors wait 20 s by default; the poll must not sleep through it)."""
    _, response = create(server, "a retry due soon")
    task_id = response.json()["taskId"]
    due_in = 2.0
    dbaccess.execute(db_target, f"UPDATE {TABLE[VIDEO]} SET status = 'failed', attempts = 1, retryable = 1, "
                     "retry_at = ? WHERE id = ?", [time.time() + due_in, task_id])
    began = time.monotonic()
    answer = requests.post(f"{server}/api/{VIDEO}/claimPendingTasks", json={"waitMs": WAIT_MS}, headers=AUTH,
                           timeout=WAIT_MS / 1000 + 10)
    took = time.monotonic() - began
    assert [task["id"] for task in answer.json()["tasks"]] == [task_id], answer.text
    assert due_in - 0.5 < took < due_in + 2, took


def test_a_stopping_web_process_answers_its_waiting_polls_at_once(tmp_path, db_path, db_env):
    """SIGTERM (a restart or deploy): the polls a worker holds answer at once, empty, instead of holding
    the shutdown until the graceful timeout cuts them off, and the web process is gone well before it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    environ = {**os.environ, "DATABASE_PATH": db_path, "PORT": str(port), **SECRETS, **db_env}
    with open(tmp_path / "gunicorn.log", "ab") as log:
        process = subprocess.Popen(gunicorn_command(port, workers=2), cwd=ROOT, env=environ, stdout=log,
                                   stderr=subprocess.STDOUT)
    answers: list = []

    def poll(integration: str):
        try:
            response = requests.get(f"{url}/api/{integration}/fetchPendingTasks?waitMs={WAIT_MS}", headers=AUTH,
                                    timeout=WAIT_MS / 1000 + 10)
            answers.append((response.status_code, response.json(), time.monotonic()))
        except requests.RequestException as exc:
            answers.append((type(exc).__name__, None, time.monotonic()))

    try:
        wait_for_http(f"{url}/healthz", process=process)
        polls = [threading.Thread(target=poll, args=(integration,)) for integration in (VIDEO, IMAGE)]
        for thread in polls:
            thread.start()
        wait_until(lambda: waiting_polls(url) == 2, message="both polls wait")
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        for thread in polls:
            thread.join(WAIT_MS / 1000 + 10)
        process.wait(timeout=10)
        gone_in = time.monotonic() - signalled
    finally:
        stop(process)
    assert [(status, answer["tasks"]) for status, answer, _ in answers] == [(200, []), (200, [])], answers
    assert max(at for _, _, at in answers) - signalled < 1.5, answers
    assert gone_in < 4, gone_in  # the graceful timeout here is 5 s (dev.stack.gunicorn_command)


def test_forty_slowloris_sockets_do_not_hold_user_requests(server, aio):
    """40 slow clients (silent, stalled in the middle of the headers, trickling a header a byte at a
    time, trickling a body) hold sockets, not threads: users are served as usual meanwhile, and each
    slow socket is closed after its request failed to arrive in time (10 s)."""
    ended: list[tuple[int, float, bytes]] = []
    began = time.monotonic()

    async def slow_client(kind: int):
        reader, writer = await asyncio.open_connection(*address(server))
        host = server.removeprefix("http://")
        if kind == 1:
            writer.write(f"POST /api/video/generate HTTP/1.1\r\nHost: {host}\r\nAuthoriz".encode())
        elif kind == 3:
            writer.write(f"POST /api/video/generate HTTP/1.1\r\nHost: {host}\r\n{USER_LINE}\r\n"
                         "Content-Type: application/json\r\nContent-Length: 400\r\n\r\n{".encode())
        try:
            while True:
                if kind >= 2:
                    writer.write(b"x")
                try:
                    data = await asyncio.wait_for(reader.read(1000), 0.5)
                    ended.append((kind, time.monotonic() - began, data[:40]))
                    return
                except TimeoutError:
                    pass
        except OSError:
            ended.append((kind, time.monotonic() - began, b"reset"))
        finally:
            writer.close()

    clients = [aio.spawn(slow_client(n % 4)) for n in range(40)]
    time.sleep(1)  # every slow socket open (and, before this worker, every thread held)
    took = []
    for n in range(30):
        seconds, response = create(server, f"user {n}")
        assert response.status_code == 201, response.text
        took.append(seconds)
        time.sleep(0.1)
    assert max(took) < 2, sorted(took)[-5:]
    wait_until(lambda: len(ended) == 40, timeout=20, message="every slow socket closed by the server")
    for client in clients:
        client.result(1)
    assert all(9 <= at <= 14 for _, at, _ in ended), sorted(at for _, at, _ in ended)
    assert all(data.startswith(b"HTTP/1.1 408 Request Timeout") for kind, _, data in ended if kind), ended
    assert all(data == b"" for kind, _, data in ended if not kind), ended  # nothing sent: closed, no answer


USER_LINE = f"Authorization: {USER['Authorization']}"


def test_a_slow_client_on_a_kept_alive_connection_holds_no_thread(server):
    """The second request on a kept-alive connection trickles in: gthread would give it a thread at its
    first byte. Eight such connections per worker would hold every thread; users are served anyway."""
    sockets = []
    for _ in range(40):
        sock = socket.create_connection(address(server), timeout=5)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /heal")  # the next request, never finished
        sockets.append(sock)
    try:
        took = []
        for n in range(20):
            seconds, response = create(server, f"user {n}")
            assert response.status_code == 201
            took.append(seconds)
        assert max(took) < 2, sorted(took)[-5:]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture
def conf(monkeypatch, tmp_path):
    """gunicorn.conf.py as a module (its own metrics folder kept out of this process's environment)."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    spec = importlib.util.spec_from_file_location("gunicorn_conf", ROOT / "gunicorn.conf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HEAD = b"POST /api/video/generate HTTP/1.1\r\nHost: x\r\n"


@pytest.mark.parametrize(("request_", "after"), [
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b""),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /he"),  # pipelined: the first one ends there
    (HEAD + b"Content-Length: 5\r\n\r\n{\"a\":", b""),
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", b""),
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX-Trailer: 1\r\n\r\n", b""),
    # what gunicorn's parser refuses anyway goes to it at once: the refusal does not wait for more
    (b"GET / HTTP/1.1\nHost: x", b""),
    (HEAD + b"Content-Length: -1\r\n\r\n", b"xx"),
    (HEAD + b"Transfer-Encoding: gzip\r\n\r\n", b"xx"),
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz", b"\r\n"),
])
def test_a_request_is_whole_once_its_head_and_body_have_arrived(conf, request_, after):
    assert conf.request_end(request_ + after) == len(request_)


@pytest.mark.parametrize("data", [
    b"", b"GET /healthz HTTP/1.1\r\nHo", b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
    HEAD + b"Content-Length: 5\r\n\r\n{\"a\"",
    HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    HEAD + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX-Trailer: 1\r\n",
])
def test_a_request_in_part_is_read_on(conf, data):
    assert conf.request_end(data) is None


@pytest.mark.parametrize(("data", "status"), [
    (b"GET / HTTP/1.1\r\nX-Big: " + b"x" * 70_000, b"431"),
    (HEAD + b"Content-Length: 2000000\r\n\r\n", b"413"),
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"ffffff\r\n" + b"x" * 1_100_000, b"413"),
])
def test_a_request_too_large_to_hold_is_refused_before_a_thread_sees_it(conf, data, status):
    with pytest.raises(conf.Refused) as refused:
        conf.request_end(data)
    assert refused.value.answer.startswith(b"HTTP/1.1 " + status)
    assert b'{"success": false, "error": ' in refused.value.answer


def test_the_budget_declines_past_its_slots_and_keeps_each_integrations_share():
    from web.commit_watch import WaitBudget

    budget = WaitBudget(4)  # a worker's default: half of 8 threads, two integrations
    assert [budget.take(VIDEO, 2) for _ in range(3)] == [True, True, False]
    assert [budget.take(IMAGE, 2) for _ in range(3)] == [True, True, False]
    budget.give_back(VIDEO)
    assert budget.take(VIDEO, 2) and not budget.take(IMAGE, 2)
    assert not WaitBudget(0).take(VIDEO, 2)  # WEB_LONG_POLLS=0: no long poll is held
    assert all(WaitBudget(None).take(VIDEO, 2) for _ in range(100))  # no gunicorn (dev server, tests)


@pytest.mark.parametrize("hang_up_events", [True, False], ids=["linux", "elsewhere"])
def test_a_wait_ends_as_soon_as_its_client_hangs_up(tmp_path, monkeypatch, hang_up_events):
    """On Linux the hang-up wakes the wait; without POLLRDHUP the socket is looked at every 50 ms."""
    from web import commit_watch, db
    from web.commit_watch import CommitWaiter

    if not hang_up_events:
        monkeypatch.setattr(commit_watch, "POLLRDHUP", 0)
    path = str(tmp_path / "app.db")
    db.init_db(path)
    ours, theirs = socket.socketpair()
    waiter = CommitWaiter(db.connect(path), path, ours)
    threading.Timer(0.2, theirs.close).start()
    began = time.monotonic()
    assert waiter.wait(began + 10) is False and waiter.client_gone
    assert time.monotonic() - began < 1
    ours.close()
