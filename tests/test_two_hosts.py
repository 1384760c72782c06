"""Two web hosts on one PostgreSQL (issue 16): two gunicorn instances share the task store, processors
spread over both, and every task is still claimed once.

PostgreSQL only: two SQLite web processes on one file would be one host (the file is local to it).
The hosts meet only in the database: a task created on one host is claimed through the other, so
the claim's single winner rests on the row lock and the attempt fence in the WHERE
(web/task_store.py), and the wake-up of the other host's long polls on LISTEN/NOTIFY (web/pg_wakeup.py).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from dev import dbaccess
from dev.invariants import check
from dev.stack import Stack, gunicorn
from tests.conftest import SECRETS, TOKEN, USER, wait_until
from tests.test_single_winner import assert_one_winner_each, queued_per_task

pytestmark = pytest.mark.slow

TASKS = 1000
PROCESSORS_PER_HOST = 2
# No cap of the system's or the fakes' gets in the way: this is about claims, not provider limits.
# A long stuck timeout: a task waiting its turn in the worker is not rescued (which would be attempt 2).
# Few starts in flight per processor: on a busy machine 4 x 50 starts at once outran the dev server's
# 10 s start timeout (a failed start is a retry, a second attempt: correct, but not the ordinary path).
FAST = {"FANGZHOU_MAX_ACTIVE": 100_000, "NANOBANANA_MAX_ACTIVE": 100_000, "FANGZHOU_CALLS_PER_SECOND": 10_000,
        "NANOBANANA_CALLS_PER_SECOND": 10_000, "FAKE_ARK_QUEUE_LIMIT": 100_000, "FAKE_STEP_SECONDS": 0.2,
        "FANGZHOU_POLL_INTERVAL_SECONDS": 0.5, "NANOBANANA_POLL_INTERVAL_SECONDS": 0.5, "BATCH_SIZE": 10,
        "MAX_IN_FLIGHT": 10, "STUCK_TIMEOUT_SECONDS": 600}
KINDS = {"video": "video_tasks", "image": "image_tasks"}


def create(url: str, kind: str, prompt: str, session: requests.Session | None = None, user: dict = USER) -> str:
    response = (session or requests).post(f"{url}/api/{kind}/generate", json={"prompt": prompt}, headers=user,
                                          timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["taskId"]


def unfinished(database: str) -> int:
    return sum(dbaccess.query(database, f"SELECT COUNT(*) AS n FROM {table} WHERE status <> 'completed'")[0]["n"]
               for table in KINDS.values())


def test_1000_tasks_over_two_hosts_each_claimed_once(tmp_path, pg_url):
    began = time.monotonic()
    with Stack(tmp_path, DATABASE_URL=pg_url, **FAST) as stack:
        stack.start_temporal(in_memory=True)
        stack.start_fakes()
        hosts = [stack.start_web(), stack.start_web(name="web2")]
        assert hosts[0] != hosts[1]
        for n, url in enumerate(hosts):
            # A worker per host. A worker reports only to its MAIN_ENDPOINT's origin (the internal token goes
            # nowhere else), and a workflow's reports go to the host its processor claimed through, so each
            # host's processors and worker have task queues of their own. (Hosts behind one load balancer
            # URL would share one MAIN_ENDPOINT and need no such split.)
            host = {"MAIN_ENDPOINT": url, "FANGZHOU_TASK_QUEUE": f"video-host{n}",
                    "NANOBANANA_TASK_QUEUE": f"image-host{n}"}
            stack.start_worker(f"worker-{n}", **host)
            for p in range(PROCESSORS_PER_HOST):
                stack.start_processor(f"processor-{n}-{p}", **host)

        # Half video, half image, alternately through either host, while the processors long-poll both.
        jobs = [(hosts[n % 2], "video" if (n // 2) % 2 else "image", f"two hosts {n}") for n in range(TASKS)]
        sessions = {url: requests.Session() for url in hosts}  # requests.Session is fine across threads here
        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(lambda job: create(*job, sessions[job[0]], stack.user), jobs))
        created = time.monotonic()
        assert len(set(ids)) == TASKS

        wait_until(lambda: unfinished(stack.database) == 0, timeout=480, interval=1.0,
                   message=f"{TASKS} tasks completed")
        done = time.monotonic()

        rows = {r["id"]: r for table in KINDS.values()
                for r in dbaccess.query(stack.database, f"SELECT * FROM {table}")}
        assert set(rows) == set(ids)
        assert Counter(r["status"] for r in rows.values()) == {"completed": TASKS}
        events = defaultdict(list)
        for e in dbaccess.query(stack.database, "SELECT task_id, status, attempt FROM task_events ORDER BY id"):
            events[e["task_id"]].append((e["status"], e["attempt"]))
        for task_id, row in rows.items():
            queued = [attempt for status, attempt in events[task_id] if status == "queued"]
            failed = [attempt for status, attempt in events[task_id] if status == "failed"]
            # One `queued` event per attempt: a task claimed twice (two hosts both winning it) has two for
            # one attempt, or an attempt 2 with no failure of attempt 1 before it.
            assert queued == list(range(1, row["attempts"] + 1)), (task_id, events[task_id])
            assert failed == list(range(1, row["attempts"])), (task_id, events[task_id])
        retried = {t: r["attempts"] for t, r in rows.items() if r["attempts"] != 1}
        # The ordinary path is one attempt; a retry comes only after a recorded failure (above), such as a
        # workflow start that timed out on an overloaded machine. Most tasks must be ordinary.
        assert len(retried) <= TASKS // 20, retried
        findings = check(stack.database, stack.temporal_address)
        assert findings.ok, findings.summary()
        attempts = sum(r["attempts"] for r in rows.values())
        assert findings.completed == TASKS and TASKS <= findings.runs <= attempts, findings.summary()

        # The work was spread: every processor (so both hosts) started workflows, both workers ran them.
        started = {name: (tmp_path / f"{name}.log").read_text().count("workflow started")
                   for name in stack.processes if name.startswith("processor-")}
        assert len(started) == 2 * PROCESSORS_PER_HOST and all(started.values()), started
        assert TASKS <= sum(started.values()) <= attempts, started
    for name in ("web", "web2", "worker-0", "worker-1", *started):
        log = (tmp_path / f"{name}.log").read_text()
        assert "Traceback" not in log, f"{name}: {log[-3000:]}"
    print(f"\n{TASKS} tasks over two hosts: created in {created - began:.1f}s from the stack's start, "
          f"all completed {done - created:.1f}s later; workflows started per processor {started}; "
          f"{len(retried)} retried after a failure {retried}")


# -- the single-winner race across hosts (tests/test_single_winner.py, on SQLite, races gunicorn workers) --

RACE_TASKS = 20
CLAIMS_PER_TASK = 48
REPORT = "/api/fangzhouVideoGeneration/reportFangzhouVideoResult"
UNCAPPED = {**SECRETS, "FANGZHOU_MAX_ACTIVE": "100000"}  # every task may be claimed at once
INTERNAL = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def two_hosts(tmp_path, pg_url):
    """Two gunicorn instances (4 workers each) on one PostgreSQL schema; yields (their URLs, their logs)."""
    logs = [tmp_path / "host1.log", tmp_path / "host2.log"]
    env = {**UNCAPPED, "DATABASE_URL": pg_url}
    with gunicorn(str(tmp_path / "unused.db"), logs[0], workers=4, env=env) as first, \
            gunicorn(str(tmp_path / "unused.db"), logs[1], workers=4, env=env) as second:
        yield [first, second], logs
    for log in logs:
        text = log.read_text()
        assert "Traceback" not in text, text[-3000:]
    assert not (tmp_path / "unused.db").exists()  # both hosts ran on PostgreSQL, not on a file of their own


def race_tasks(hosts: list[str]) -> list[str]:
    return [create(hosts[n % 2], "video", f"race {n}") for n in range(RACE_TASKS)]


def test_single_winner_of_48_claims_per_task_across_two_hosts(two_hosts, pg_url):
    """A task's 48 claims are let go together (a barrier), alternately to either host: they meet in the
    database within a millisecond or so, where only the row lock and the attempt fence keep one winner."""
    hosts, _ = two_hosts
    task_ids = race_tasks(hosts)
    sessions = threading.local()

    def claim(task_id, n, barrier):
        if not hasattr(sessions, "s"):  # a kept connection: the barrier's release is not spent on connecting
            sessions.s = requests.Session()
        barrier.wait(timeout=30)
        response = sessions.s.post(f"{hosts[n % 2]}{REPORT}", json={"apiCallId": task_id, "status": "queued"},
                                   headers=INTERNAL, timeout=30)
        return task_id, response.status_code, response.json()

    answers = []
    with ThreadPoolExecutor(max_workers=CLAIMS_PER_TASK) as pool:
        for task_id in task_ids:
            barrier = threading.Barrier(CLAIMS_PER_TASK)
            answers += list(pool.map(lambda n, t=task_id, b=barrier: claim(t, n, b), range(CLAIMS_PER_TASK)))

    # Checked: with task_store's FOR UPDATE and attempt fence taken out, this fails with 2 winners.
    assert_one_winner_each(answers, task_ids, CLAIMS_PER_TASK, pg_url)
    print(f"\n{len(answers)} concurrent claims over two hosts: {RACE_TASKS} winners, "
          f"{len(answers) - RACE_TASKS} refused with 409")


def test_single_winner_of_48_batch_claims_across_two_hosts(two_hosts, pg_url):
    """Processors claim a batch per request: 48 concurrent batches of the same 20 tasks, in random orders
    (so the rows are met in every order: the store locks them in id order, or this deadlocks), one winner each."""
    hosts, _ = two_hosts
    task_ids = race_tasks(hosts)

    def claim_batch(seed):
        batch = [{"apiCallId": t, "status": "queued"} for t in random.Random(seed).sample(task_ids, RACE_TASKS)]
        response = requests.post(f"{hosts[seed % 2]}{REPORT}", json=batch, headers=INTERNAL, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()["results"]

    with ThreadPoolExecutor(max_workers=CLAIMS_PER_TASK) as pool:
        results = [r for batch in pool.map(claim_batch, range(CLAIMS_PER_TASK)) for r in batch]
    wins = defaultdict(int)
    for result in results:
        assert result["success"] or result["code"] == 409, result
        wins[result["apiCallId"]] += result["success"]
    assert len(results) == RACE_TASKS * CLAIMS_PER_TASK
    assert wins == dict.fromkeys(task_ids, 1)  # a double claim is a 2 here
    queued = queued_per_task(pg_url)
    attempts = {r["id"]: r["attempts"] for r in dbaccess.query(pg_url, "SELECT id, attempts FROM video_tasks")}
    assert queued == dict.fromkeys(task_ids, 1) and attempts == dict.fromkeys(task_ids, 1)
