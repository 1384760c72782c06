"""Idle processors wait 20 s on the server (POLL_INTERVAL_MS): what that long wait must not hold back.

Real parts: gunicorn, the Temporal dev server (behind a TCP relay that adds network delay, as a Temporal
a few hundred milliseconds away would be), the processor in-process.
"""

import asyncio
import json
import threading
import time

import pytest

from dev import dbaccess
from settings import ROOT
from tests.conftest import BACKENDS, TABLE, VIDEO, wait_until
from tests.test_processor import processor_for

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("backend", BACKENDS, indirect=True)]

SHIPPED_POLL_INTERVAL_MS = json.loads((ROOT / "app.config.json").read_text())["components"]["asyncTask"][
    "pullMode"]["pollIntervalMs"]


class DelayingRelay:
    """A TCP relay on 127.0.0.1 to `target` that delivers every chunk `delay` seconds late, each way."""

    def __init__(self, target: str, delay: float):
        self.host, port = target.rsplit(":", 1)
        self.port, self.delay = int(port), delay
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(5), "the relay did not start"

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        self.ready.set()
        self.loop.run_forever()

    async def _serve(self, reader, writer):
        upstream_reader, upstream_writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), 5)
        await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer),
                             return_exceptions=True)

    async def _pipe(self, reader, writer):
        queue: asyncio.Queue = asyncio.Queue()

        async def deliver():
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - self.loop.time()))
                if not data:
                    writer.close()
                    return
                writer.write(data)
                await writer.drain()

        delivering = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(65536)
                queue.put_nowait((self.loop.time() + self.delay, data))
                if not data:
                    break
            await delivering
        finally:
            delivering.cancel()

    def close(self):
        async def shut():
            self.server.close()
            tasks = asyncio.all_tasks() - {asyncio.current_task()}
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.loop.stop()

        asyncio.run_coroutine_threadsafe(shut(), self.loop)
        self.thread.join(5)


def test_a_start_confirmation_is_not_held_for_the_whole_idle_wait(web, temporal, db_target):
    """An idle processor at the shipped POLL_INTERVAL_MS (20 s), Temporal 0.3 s away (each RPC takes longer
    than the 250 ms proof of health lasts): a task is claimed and its workflow started, and the start's
    confirmation (`dispatchedAt`, which also carries back a cancel asked for meanwhile) reaches the web
    process within a couple of seconds, not when the poll thread's 20 s idle fetch ends."""
    from tests.test_long_polls import waiting_polls

    assert SHIPPED_POLL_INTERVAL_MS >= 10_000  # what this test is about
    relay = DelayingRelay(temporal, delay=0.15)
    app = web()
    processor = processor_for(app.url, relay.address, POLL_INTERVAL_MS=SHIPPED_POLL_INTERVAL_MS)
    processor.start(processor.pull_configs)
    try:
        wait_until(lambda: waiting_polls(app.url) == 2, timeout=15, message="both idle polls wait")
        task_id = app.create(VIDEO)
        wait_until(lambda: processor.stats["started"] == 1, timeout=15, message="the workflow started")
        started = time.monotonic()

        def confirmed():
            rows = dbaccess.query(db_target, f"SELECT dispatched_at FROM {TABLE[VIDEO]} WHERE id = ?", [task_id])
            return rows[0]["dispatched_at"] is not None

        wait_until(confirmed, timeout=20, message="the start confirmed")
        took = time.monotonic() - started
    finally:
        processor.stop()
        relay.close()
    assert took < 3, f"the start's confirmation reached the web process {took:.1f}s after the workflow started"


def test_a_task_is_not_left_to_processors_declined_for_the_idle_wait(tmp_path, db_path, db_env, db_target,
                                                                    temporal):
    """The web process holds one long poll per integration (WEB_LONG_POLLS=2, one worker). Processor A cannot
    reach Temporal (one host's network, a bad certificate); B can. Were A to hold both slots, B would be
    declined and told `retryAfterMs` = 100-150 % of its 20 s wait, and a task created then would be claimed
    only when B asked again (A cannot claim it: its fetch wakes, its health check fails). A checks Temporal
    before it waits, so it holds no slot, and B claims at once."""
    from dev.stack import free_port, gunicorn
    from tests.conftest import SECRETS
    from tests.test_long_polls import waiting_polls

    log = tmp_path / "gunicorn.log"
    env = {**SECRETS, **db_env, "WEB_LONG_POLLS": "2", "GUNICORN_CMD_ARGS": "--access-logfile -"}
    with gunicorn(db_path, log, workers=1, env=env) as url:
        from tests.conftest import Web

        app = Web(url, db_target)
        cut_off = processor_for(url, f"127.0.0.1:{free_port()}", instance="cut-off",
                                POLL_INTERVAL_MS=SHIPPED_POLL_INTERVAL_MS)
        healthy = processor_for(url, temporal, instance="healthy", POLL_INTERVAL_MS=SHIPPED_POLL_INTERVAL_MS)
        cut_off.start(cut_off.pull_configs)
        try:
            wait_until(lambda: cut_off.failures >= 2 or waiting_polls(url) == 2,
                       message="the cut-off processor has found Temporal unreachable, or holds both slots")
            healthy.start(healthy.pull_configs)

            def fetches() -> int:
                return sum("fetchPendingTasks" in line for line in log.read_text().splitlines())

            wait_until(lambda: fetches() >= 2 or waiting_polls(url) == 2,
                       message="the healthy processor's fetches answered (declined) or waiting")
            task_id = app.create(VIDEO)
            created = time.monotonic()
            wait_until(lambda: app.task(task_id)["status"] != "pending", timeout=25, message="the task claimed")
            took = time.monotonic() - created
        finally:
            healthy.stop()
            cut_off.stop()
    assert healthy.stats["claimed"] == 1
    assert took < 3, f"the task was claimed {took:.1f}s after it was created"


def test_a_max_requests_restart_is_not_held_by_an_idle_poll(tmp_path, db_path, db_env):
    """gunicorn's `max_requests` stops a worker without SIGTERM (it sets `alive` to False itself): its waiting
    long polls must still answer at once. Otherwise the old worker lives on until its 20 s poll ends (its
    pool's threads are joined at exit), and with one worker nobody is served meanwhile."""
    import requests

    from dev.stack import gunicorn
    from tests.conftest import AUTH, SECRETS

    log = tmp_path / "gunicorn.log"
    env = {**SECRETS, **db_env, "GUNICORN_CMD_ARGS": "--max-requests 30"}
    with gunicorn(db_path, log, workers=1, env=env) as url:
        answers: list = []

        def poll():
            began = time.monotonic()
            try:
                answer = requests.get(f"{url}/api/{VIDEO}/fetchPendingTasks?waitMs={SHIPPED_POLL_INTERVAL_MS}",
                                      headers=AUTH, timeout=SHIPPED_POLL_INTERVAL_MS / 1000 + 10)
                answers.append((answer.status_code, answer.json()["tasks"], time.monotonic() - began))
            except requests.RequestException as exc:
                answers.append((type(exc).__name__, None, time.monotonic() - began))

        polling = threading.Thread(target=poll)
        polling.start()
        from tests.test_long_polls import waiting_polls

        wait_until(lambda: waiting_polls(url) == 1, message="the poll waits")
        slowest = 0.0
        for _ in range(40):  # past max_requests: the worker restarts
            began = time.monotonic()
            while True:
                try:
                    requests.get(f"{url}/healthz", timeout=30)
                    break
                except requests.ConnectionError:  # caught in the old worker's exit (reset), as a client would retry
                    assert time.monotonic() - began < 30
                    time.sleep(0.02)
            slowest = max(slowest, time.monotonic() - began)
        polling.join(SHIPPED_POLL_INTERVAL_MS / 1000 + 15)
    assert "Autorestarting worker" in log.read_text()
    assert [(status, tasks) for status, tasks, _ in answers] == [(200, [])], answers
    assert answers[0][2] < 5, answers  # answered at the restart, not at the end of its wait
    assert slowest < 3, f"a request waited {slowest:.1f}s for the restarting worker"
