"""Cancel through the whole stack (issue 15): gunicorn, processor, worker, Temporal dev server and the fakes.

One stack serves the module, once per task store (the same assertions on both); the tests run in file order
(the first needs the processor not started yet).
"""

import random
import threading
import time

import pytest
import requests

from dev import dbaccess
from dev.invariants import check
from dev.stack import Stack
from tests.conftest import BACKENDS, wait_until

pytestmark = [pytest.mark.slow,
              pytest.mark.parametrize("module_backend", BACKENDS, indirect=True, scope="module")]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, module_db_env):
    stack = Stack(tmp_path_factory.mktemp("cancel"), FANGZHOU_DEADLINE_SECONDS=600,
                  NANOBANANA_DEADLINE_SECONDS=600, **module_db_env)
    stack.start_temporal()
    stack.start_fakes()
    stack.start_web()
    stack.start_worker()
    try:
        yield stack
    finally:
        stack.stop_all()


def running(stack):
    if "processor" not in stack.processes:
        stack.start_processor()
    return stack


def cancel(stack, task_id):
    return requests.post(f"{stack.web_url}/api/tasks/{task_id}/cancel", headers=stack.user, timeout=10)


def ended(stack, task_id, timeout=60.0):
    return wait_until(lambda: (t := stack.task(task_id))["status"] in ("completed", "failed", "cancelled") and t,
                      timeout=timeout, interval=0.2, message=f"task {task_id} ended")


def events(stack, task_id):
    rows = dbaccess.query(stack.database, "SELECT status, attempt, error FROM task_events WHERE task_id = ? "
                                          "ORDER BY id", (task_id,))
    return [(r["status"], r["attempt"], r["error"]) for r in rows]


def row(stack, task_id, table="video_tasks"):
    [found] = dbaccess.query(stack.database, f"SELECT * FROM {table} WHERE id = ?", (task_id,))
    return found


def fake_stats(stack, name):
    return requests.get(f"{stack.fake(name)}/_fake/stats", timeout=5).json()


def creates(stack, name, prompt):
    seen = requests.get(f"{stack.fake(name)}/_fake/requests", timeout=5).json()
    return [r for r in seen if r["method"] == "POST" and prompt in str(r["json"])]


def ark_job(stack, job_id):
    return requests.get(f"{stack.fake('ark')}/api/v3/contents/generations/tasks/{job_id}", timeout=5,
                        headers={"Authorization": f"Bearer {stack.env['FAKE_API_KEY']}"}).json()


def test_pending_task_is_cancelled_and_never_runs(stack):
    prompt = "cancelled while pending"
    task_id = stack.create("video", prompt)  # no processor yet: it stays pending
    answer = cancel(stack, task_id)
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
    running(stack)
    other = stack.create("video", "a task after it")
    assert ended(stack, other)["status"] == "completed"  # the processor ran meanwhile
    assert stack.task(task_id)["status"] == "cancelled" and stack.task(task_id)["attempts"] == 0
    assert creates(stack, "ark", prompt) == []


def test_queued_task_whose_workflow_waits_for_a_worker_never_reaches_the_provider(stack):
    """Claimed and started, but no worker runs it yet: the cancel reaches Temporal first, and the run, once a
    worker takes it, ends at its first step: no provider job is ever made."""
    running(stack)
    stack.kill("worker")
    prompt = "cancelled while queued"
    task_id = stack.create("video", prompt)
    wait_until(lambda: row(stack, task_id)["dispatched_at"] is not None, timeout=30, message="workflow started")
    answer = cancel(stack, task_id)
    assert answer.status_code == 202 and answer.json()["status"] == "queued"
    wait_until(lambda: "workflow cancel requested" in (stack.folder / "processor.log").read_text(), timeout=30,
               message="the processor delivered the cancel")
    stack.start_worker()
    task = ended(stack, task_id)
    assert task["status"] == "cancelled"
    assert events(stack, task_id)[-1] == ("cancelled", 1, "cancelled before a provider job was made")
    assert creates(stack, "ark", prompt) == []


def test_processing_video_job_is_cancelled_at_the_provider(stack):
    running(stack)
    prompt = "a long queue to cancel [slow:120]"
    task_id = stack.create("video", prompt)
    job_id = wait_until(lambda: stack.task(task_id)["externalId"], timeout=30, message="processing")
    assert stack.task(task_id)["status"] == "processing"
    answer = cancel(stack, task_id)
    assert answer.status_code == 202 and answer.json()["status"] == "processing"
    task = ended(stack, task_id)
    assert task["status"] == "cancelled" and task["attempts"] == 1
    assert events(stack, task_id)[-1] == ("cancelled", 1, "cancelled; the provider's job was cancelled too")
    assert ark_job(stack, job_id)["status"] == "cancelled"
    assert len(creates(stack, "ark", prompt)) == 1
    assert cancel(stack, task_id).status_code == 200  # again: nothing changes
    assert late_report(stack, task_id).status_code == 409


def late_report(stack, task_id):
    """What a run still going after the cancel would send: refused."""
    return requests.post(f"{stack.web_url}/api/fangzhouVideoGeneration/reportFangzhouVideoResult", timeout=10,
                         headers={"Authorization": f"Bearer {stack.env['INTERNAL_API_TOKEN']}"},
                         json={"apiCallId": task_id, "status": "completed", "attempt": 1, "data": {}})


def test_processing_image_job_that_cannot_be_cancelled_is_still_cancelled_here(stack):
    """kie.ai has no cancel: the task is cancelled and says its provider job runs to its end."""
    running(stack)
    task_id = stack.create("image", "an image to cancel [slow:120]")
    wait_until(lambda: stack.task(task_id)["status"] == "processing", timeout=30, message="processing")
    assert cancel(stack, task_id).status_code == 202
    task = ended(stack, task_id)
    assert task["status"] == "cancelled"
    last = events(stack, task_id)[-1]
    assert last[0] == "cancelled" and "could not be cancelled" in last[2]


def test_finished_tasks_answer_409(stack):
    running(stack)
    done = stack.create("image", "finished first")
    rejected = stack.create("image", "refused [reject]")
    assert ended(stack, done)["status"] == "completed"
    assert ended(stack, rejected)["status"] == "failed"
    for task_id, status in ((done, "completed"), (rejected, "failed")):
        answer = cancel(stack, task_id)
        assert answer.status_code == 409 and f"Cannot cancel a {status} task" in answer.json()["error"]
        assert stack.task(task_id)["status"] == status


def test_cancels_racing_completions_have_one_outcome_each(stack):
    """Short jobs, each cancelled at a random moment around its end: every task ends once, completed or
    cancelled, never both, and the invariant checker finds nothing wrong."""
    running(stack)
    ids = [stack.create(kind, f"race {n}") for n in range(24) for kind in (["video", "image"][n % 2],)]
    rng = random.Random(15)
    answers = {}

    def later(task_id, delay):
        time.sleep(delay)
        answers[task_id] = cancel(stack, task_id).status_code

    threads = [threading.Thread(target=later, args=(t, rng.uniform(0, 4))) for t in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    final = {t: ended(stack, t, timeout=120)["status"] for t in ids}
    for task_id, status in final.items():
        assert status in ("completed", "cancelled"), (task_id, status)
        endings = [e[0] for e in events(stack, task_id) if e[0] in ("completed", "cancelled")]
        assert endings == [status], (task_id, endings)
        assert answers[task_id] in (200, 202, 409)
        if answers[task_id] == 409:
            assert status == "completed"  # it had finished before the cancel came
    findings = check(stack.database, stack.temporal_address, max_attempts=5)
    assert findings.ok, findings.summary()
    assert findings.completed + findings.cancelled >= len(ids)
