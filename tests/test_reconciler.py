"""The reconciler: a task whose workflow is gone is failed for a retry and then completes, with no operator."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import requests

from dev import dbaccess
from dev.stack import Stack
from reconciler import RateLimit
from tests.conftest import AUTH, BACKENDS, IMAGE, TABLE, VIDEO, wait_until

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)  # the same assertions on both stores

AFTER_SECONDS = 2
INTERVAL_SECONDS = 0.5
RECONCILE = {"RECONCILE_AFTER_SECONDS": AFTER_SECONDS, "RECONCILE_INTERVAL_SECONDS": INTERVAL_SECONDS,
             "RECONCILE_CALLS_PER_MINUTE": 600}


def age(target, namespace, task_id, seconds):
    """Make a task look unchanged for `seconds` (`target`: as db_target)."""
    dbaccess.execute(target, f"UPDATE {TABLE[namespace]} SET updated_at = ? WHERE id = ?",
                     (time.time() - seconds, task_id))


def dispatched(client, namespace=VIDEO, **query):
    answer = client.get(f"/api/{namespace}/fetchDispatchedTasks", query_string=query, headers=AUTH)
    assert answer.status_code == 200, answer.json
    return answer.json


def test_fetch_dispatched_tasks_lists_only_what_temporal_owns_and_is_old(client, tasks, db_target):
    processing = tasks.put(status="processing", attempts=1, started_at=int(time.time()))
    confirmed = tasks.put(status="queued", attempts=2, started_at=int(time.time()), dispatched_at=time.time())
    unconfirmed = tasks.put(status="queued", attempts=1, started_at=int(time.time()))  # the stuck rescue's
    young = tasks.put(status="processing", attempts=1)
    others = [tasks.put(status=s, attempts=a) for s, a in (("pending", 0), ("completed", 1), ("failed", 1))]
    for task_id in (processing, confirmed, unconfirmed, *others):
        age(db_target, VIDEO, task_id, 60)
    found = dispatched(client, olderThanSeconds=30)
    assert {t["id"] for t in found["tasks"]} == {processing, confirmed}
    assert found["next"] is None
    assert {t["id"]: t["attempts"] for t in found["tasks"]} == {processing: 1, confirmed: 2}
    assert young in {t["id"] for t in dispatched(client, olderThanSeconds=0)["tasks"]}  # young, not excluded
    assert dispatched(client, IMAGE, olderThanSeconds=30)["tasks"] == []


def test_fetch_dispatched_tasks_pages_with_a_cursor(client, tasks, db_target):
    ids = []
    for n in range(7):
        task_id = tasks.put(status="processing", attempts=1, created_at=1000.0 + n // 2)  # ties on createdAt
        age(db_target, VIDEO, task_id, 60)
        ids.append(task_id)
    seen, after, pages = [], None, 0
    while True:
        page = dispatched(client, olderThanSeconds=30, limit=3, **({"after": after} if after else {}))
        seen += [t["id"] for t in page["tasks"]]
        pages += 1
        after = page["next"]
        if after is None:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen)) and pages == 3


@pytest.mark.parametrize("after", ["x", "1.5", "nan,abc", "inf,abc", ",abc"])
def test_a_bad_cursor_is_a_400(client, after):
    answer = client.get(f"/api/{VIDEO}/fetchDispatchedTasks", query_string={"after": after}, headers=AUTH)
    assert answer.status_code == 400 and "after" in answer.json["error"]


def test_fetch_dispatched_tasks_needs_the_internal_token(client):
    assert client.get(f"/api/{VIDEO}/fetchDispatchedTasks").status_code == 401


def test_rate_limit_spaces_permits_and_stops_early():
    stopping = threading.Event()
    limit = RateLimit(per_minute=600)  # one permit every 0.1 s
    began = time.monotonic()
    assert all(limit.wait(stopping) for _ in range(6))
    assert time.monotonic() - began >= 0.45
    stopping.set()
    assert limit.wait(stopping) is False


def events(stack, task_id):
    return requests.get(f"{stack.web_url}/api/tasks/{task_id}/events", timeout=10, headers=stack.user).json()["events"]


def processing(stack, task_id):
    """Wait for the task to be processing; its provider job id."""
    task = wait_until(lambda: (t := stack.task(task_id))["status"] == "processing" and t, timeout=60,
                      message="processing")
    return task["externalId"]


def healed(stack, task_id, since, first_job):
    """The task was failed (retryable) at attempt 1 by the reconciler, then completed at attempt 2, which
    took up attempt 1's provider job (still running) instead of creating another."""
    task = wait_until(lambda: (t := stack.task(task_id))["status"] == "completed" and t, timeout=90,
                      message="completed on the next attempt")
    assert task["externalId"] == first_job
    [failed] = [e for e in events(stack, task_id) if e["status"] == "failed"]
    assert failed["attempt"] == 1 and failed["error"] == "The provider is unavailable; retrying"  # users
    [stored] = [r["error"] for r in dbaccess.query(  # operators keep the whole text
        stack.database, "SELECT error FROM task_events WHERE task_id = ? AND status = 'failed'", (task_id,))]
    assert stored.startswith("Workflow gone: ") and "reconciler" in stored
    assert task["attempts"] == 2
    # The run was gone AFTER_SECONDS after the task's last change; the reconciler found it within an interval.
    assert failed["createdAt"] - since <= AFTER_SECONDS + INTERVAL_SECONDS + 5
    statuses = [(e["status"], e["attempt"]) for e in events(stack, task_id)]
    assert statuses == [("pending", 0), ("queued", 1), ("processing", 1), ("failed", 1), ("queued", 2),
                        ("processing", 2), ("completed", 2)]


@pytest.mark.slow
def test_a_workflow_terminated_in_temporal_is_healed(tmp_path, db_env):
    from temporalio.client import Client

    with Stack(tmp_path, **RECONCILE, **db_env).start_all() as stack:
        task_id = stack.create("video", "a heron [slow:10]")  # a 20 s job: alive when attempt 2 starts
        first_job = processing(stack, task_id)

        async def terminate():
            client = await Client.connect(stack.temporal_address)
            await client.get_workflow_handle(f"{VIDEO}:{task_id}").terminate(reason="an operator in the UI")

        asyncio.run(terminate())
        healed(stack, task_id, since=time.time(), first_job=first_job)
        processor_log = (tmp_path / "processor.log").read_text()
        assert "workflow gone; task failed for a retry" in processor_log and "found=TERMINATED" in processor_log


@pytest.mark.slow
def test_a_workflow_lost_with_temporals_state_is_healed(tmp_path, db_env):
    with Stack(tmp_path, **RECONCILE, **db_env).start_all() as stack:
        task_id = stack.create("image", "a lighthouse [slow:10]")
        first_job = processing(stack, task_id)
        stack.kill("temporal")
        (tmp_path / "temporal.db").unlink()  # Temporal comes back with none of its state
        stack.start_temporal()
        healed(stack, task_id, since=time.time(), first_job=first_job)
        assert "found=NOT_FOUND" in (tmp_path / "processor.log").read_text()
