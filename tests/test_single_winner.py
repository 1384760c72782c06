"""docs/design.md §4.1 across processes: of 32 concurrent claims per task, exactly one wins."""

import random
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from dev import dbaccess
from dev.stack import gunicorn
from tests.conftest import BACKENDS, SECRETS, TOKEN, USER

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)  # the same assertions on both stores

UNCAPPED = {**SECRETS, "FANGZHOU_MAX_ACTIVE": "100000"}  # every task may be claimed at once

TASKS = 20
CLAIMS_PER_TASK = 32
REPORT = "/api/fangzhouVideoGeneration/reportFangzhouVideoResult"


@pytest.mark.slow
def test_single_winner_across_gunicorn_workers(tmp_path, db_path, db_target, db_env):
    log_path = tmp_path / "gunicorn.log"
    with gunicorn(db_path, log_path, workers=4, env={**UNCAPPED, **db_env}) as url:
        task_ids = [requests.post(f"{url}/api/video/generate", json={"prompt": f"race {i}"}, headers=USER, timeout=10)
                    .json()["taskId"] for i in range(TASKS)]
        claims = [task_id for task_id in task_ids for _ in range(CLAIMS_PER_TASK)]
        random.shuffle(claims)

        def claim(task_id):
            response = requests.post(f"{url}{REPORT}", json={"apiCallId": task_id, "status": "queued"},
                                     headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
            return task_id, response.status_code, response.json()

        with ThreadPoolExecutor(max_workers=128) as pool:
            answers = list(pool.map(claim, claims))

    assert_one_winner_each(answers, task_ids, CLAIMS_PER_TASK, db_target)
    log = log_path.read_text()
    assert "database is locked" not in log and "Traceback" not in log, log[-3000:]
    print(f"{len(answers)} concurrent claims over {TASKS} tasks: {TASKS} winners, "
          f"{len(answers) - TASKS} refused with 409")


@pytest.mark.slow
def test_single_winner_across_concurrent_batch_claims(tmp_path, db_path, db_target, db_env):
    """Processors claim a batch per request: 32 concurrent batches of the same 20 tasks, one winner each."""
    with gunicorn(db_path, tmp_path / "gunicorn.log", workers=4, env={**UNCAPPED, **db_env}) as url:
        task_ids = [requests.post(f"{url}/api/video/generate", json={"prompt": f"race {i}"}, headers=USER, timeout=10)
                    .json()["taskId"] for i in range(TASKS)]

        def claim_batch(seed):
            batch = [{"apiCallId": t, "status": "queued"} for t in random.Random(seed).sample(task_ids, TASKS)]
            response = requests.post(f"{url}{REPORT}", json=batch, timeout=30,
                                     headers={"Authorization": f"Bearer {TOKEN}"})
            assert response.status_code == 200, response.text
            return response.json()["results"]

        with ThreadPoolExecutor(max_workers=CLAIMS_PER_TASK) as pool:
            results = [r for batch in pool.map(claim_batch, range(CLAIMS_PER_TASK)) for r in batch]
    wins = defaultdict(int)
    for result in results:
        assert result["success"] or result["code"] == 409
        wins[result["apiCallId"]] += result["success"]
    assert wins == {t: 1 for t in task_ids}
    assert sorted(queued_per_task(db_target).values()) == [1] * TASKS


@pytest.mark.slow
def test_concurrent_claim_pending_tasks_never_hand_out_a_task_twice(tmp_path, db_path, db_target, db_env):
    """32 clients call claimPendingTasks at once over 4 gunicorn workers: every task goes to exactly one.

    This is what lets processors share a backlog without a single lost claim.
    """
    tasks = 300
    with gunicorn(db_path, tmp_path / "gunicorn.log", workers=4, env={**UNCAPPED, **db_env}) as url:
        task_ids = [requests.post(f"{url}/api/video/generate", json={"prompt": f"race {i}"}, headers=USER, timeout=10)
                    .json()["taskId"] for i in range(tasks)]

        def claim_until_empty(_):
            session = requests.Session()
            got = []
            while True:
                response = session.post(f"{url}/api/fangzhouVideoGeneration/claimPendingTasks", json={"limit": 7},
                                        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
                assert response.status_code == 200, response.text
                batch = response.json()["tasks"]
                if not batch:
                    return got
                got.extend((t["id"], t["attempt"]) for t in batch)

        with ThreadPoolExecutor(max_workers=CLAIMS_PER_TASK) as pool:
            claimed = [c for got in pool.map(claim_until_empty, range(CLAIMS_PER_TASK)) for c in got]
    assert sorted(task_id for task_id, _ in claimed) == sorted(task_ids)  # each once, none missing
    assert {attempt for _, attempt in claimed} == {1}
    counts = queued_per_task(db_target)
    statuses = {r["status"] for r in dbaccess.query(db_target, "SELECT status FROM video_tasks")}
    assert counts == dict.fromkeys(task_ids, 1) and statuses == {"queued"}


def assert_one_winner_each(answers, task_ids, claims_per_task, target):
    """Of `claims_per_task` single claims of each task, (task id, HTTP status, body) each: exactly one won, with
    attempt 1, the rest were 409, and the store holds one `queued` event and attempts 1 for every task. A double
    claim (two transactions deciding on the same pending row) shows as two winners, a second 200, a second
    `queued` event."""
    by_task = defaultdict(list)
    for task_id, code, body in answers:
        by_task[task_id].append((code, body))
    queued_events = queued_per_task(target)
    rows = {r["id"]: r["attempts"] for r in dbaccess.query(target, "SELECT id, attempts FROM video_tasks")}
    for task_id in task_ids:
        results = by_task[task_id]
        winners = [body for code, body in results if 200 <= code < 300 and body.get("success") is True]
        assert len(winners) == 1, results
        assert winners[0]["attempt"] == 1
        assert sorted(code for code, _ in results) == [200] + [409] * (claims_per_task - 1)
        assert queued_events[task_id] == 1
        assert rows[task_id] == 1


def queued_per_task(target):
    """{task id: its `queued` events}."""
    rows = dbaccess.query(target, "SELECT task_id, COUNT(*) AS n FROM task_events WHERE status = 'queued' "
                                  "GROUP BY task_id")
    return {r["task_id"]: r["n"] for r in rows}
