"""Seed step 9, each case real: every process of the system running (dev.stack.Stack)."""

import signal
import time

import pytest

from dev import dbaccess
from dev.invariants import check
from dev.stack import Stack, workflow_runs
from tests.conftest import BACKENDS, wait_until

pytestmark = [pytest.mark.slow,
              pytest.mark.parametrize("backend", BACKENDS, indirect=True)]  # the same assertions on both stores


def settled(stack, task_ids, timeout=90):
    def done():
        tasks = [stack.task(t) for t in task_ids]
        return all(t["status"] in ("completed", "failed") for t in tasks) and tasks
    return wait_until(done, timeout=timeout, interval=0.3, message="tasks settled")


def queued_events(stack):
    rows = dbaccess.query(stack.database, "SELECT task_id, attempt, COUNT(*) AS n FROM task_events "
                                          "WHERE status = 'queued' GROUP BY task_id, attempt")
    return [(r["task_id"], r["attempt"], r["n"]) for r in rows]


def test_video_and_image_go_from_pending_to_completed(tmp_path, db_env):
    with Stack(tmp_path, **db_env).start_all() as stack:
        video, image = stack.create("video", "a whale in the sky"), stack.create("image", "a red kite")
        tasks = settled(stack, [video, image])
        assert [t["status"] for t in tasks] == ["completed", "completed"]
        assert tasks[0]["result"]["videoUrl"] and tasks[1]["result"]["imageUrls"]
        for task_id in (video, image):
            events = [e["status"] for e in stack_events(stack, task_id)]
            assert events == ["pending", "queued", "processing", "completed"]
        assert check(stack.database, stack.temporal_address).ok
    for name in ("web", "processor", "worker"):  # structured one-line logs: task and attempt on each task line
        lines = [line for line in (tmp_path / f"{name}.log").read_text().splitlines() if video in line or image in line]
        assert lines, name
        for line in lines:
            assert line.startswith("ts=") and f"process={name}" in line and " attempt=" in line, line


def stack_events(stack, task_id):
    import requests
    return requests.get(f"{stack.web_url}/api/tasks/{task_id}/events", timeout=10, headers=stack.user).json()["events"]


def test_task_stuck_by_a_processor_killed_after_its_claim_is_rescued(tmp_path, db_env):
    """A batch of 100 is claimed in one request; the processor is SIGKILLed as soon as the claims land,
    before it has started most workflows. After the stuck timeout a new processor rescues them."""
    with Stack(tmp_path, BATCH_SIZE=100, STUCK_TIMEOUT_SECONDS=3, **db_env) as stack:
        stack.start_temporal()
        stack.start_fakes()
        stack.start_web()
        stack.start_worker()
        ids = [stack.create("video" if n % 2 else "image", f"stuck {n}") for n in range(100)]
        stack.start_processor("doomed")
        wait_until(lambda: queued_events(stack), timeout=30, interval=0.002, message="the batch claim")
        stack.kill("doomed", signal.SIGKILL)
        namespaces = {t: ("fangzhouVideoGeneration" if n % 2 else "nanobanana2ImageGeneration")
                      for n, t in enumerate(ids)}
        time.sleep(0.5)  # let visibility catch up with whatever the doomed processor did start
        claimed = {task_id for task_id, _, _ in queued_events(stack)}
        runs = workflow_runs(stack.temporal_address, [f"{namespaces[t]}:{t}" for t in ids])
        stranded = [t for t in ids if t in claimed and not runs[f"{namespaces[t]}:{t}"]]
        assert stranded, "the processor started every workflow before it died; nothing was stuck"

        stack.start_processor("rescuer")
        tasks = settled(stack, ids, timeout=120)
        failed = [(t["id"], t["attempts"], t.get("error")) for t in tasks if t["status"] != "completed"]
        assert not failed, failed
        by_id = {t["id"]: t for t in tasks}
        assert all(by_id[t]["attempts"] == 2 for t in stranded)
        findings = check(stack.database, stack.temporal_address)
        assert findings.ok, findings.summary()
        print(f"\n{len(stranded)} of {len(claimed)} claims were stranded by the SIGKILL; all rescued and completed")


def test_temporal_down_tasks_wait_pending_then_complete(tmp_path, db_env):
    with Stack(tmp_path, **db_env).start_all() as stack:
        first = stack.create("video", "before the outage")
        settled(stack, [first])
        stack.kill("temporal", signal.SIGTERM)
        during = [stack.create("video", "during the outage"), stack.create("image", "during the outage")]
        time.sleep(3)  # several poll intervals (200 ms) pass with Temporal down
        for task_id in during:
            task = stack.task(task_id)
            assert (task["status"], task["attempts"]) == ("pending", 0)
        stack.start_temporal()
        tasks = settled(stack, during, timeout=90)
        assert [(t["status"], t["attempts"]) for t in tasks] == [("completed", 1), ("completed", 1)]


def test_two_processors_every_task_completes_with_one_claim_per_attempt(tmp_path, db_env):
    with Stack(tmp_path, BATCH_SIZE=5, **db_env).start_all() as stack:
        stack.start_processor("second")
        ids = [stack.create("video" if n % 2 else "image", f"pair {n}") for n in range(40)]
        tasks = settled(stack, ids, timeout=120)
        assert {t["status"] for t in tasks} == {"completed"}
        counts = queued_events(stack)
        assert len(counts) == 40 and {n for _, _, n in counts} == {1}
        assert check(stack.database, stack.temporal_address).ok
        logs = [(tmp_path / f"{name}.log").read_text() for name in ("processor", "second")]
        print("\nworkflows started by each processor:", [log.count("workflow started") for log in logs])
