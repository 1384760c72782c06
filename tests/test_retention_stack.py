"""Retention through the whole stack: the web process's periodic prune (RETENTION_DAYS) under gunicorn."""

import re
import time

import pytest
import requests

from dev import dbaccess
from dev.stack import Stack
from tests.conftest import BACKENDS, wait_until

pytestmark = [pytest.mark.slow,
              pytest.mark.parametrize("backend", BACKENDS, indirect=True)]  # the same assertions on both stores
KEEP_SECONDS = 3.0


def events(stack, task_id):
    rows = dbaccess.query(stack.database, "SELECT status FROM task_events WHERE task_id = ? ORDER BY id", (task_id,))
    return [(r["status"],) for r in rows]


def row(stack, task_id, status):
    """The image task's row once it has `status` (None before)."""
    found = dbaccess.query(stack.database, "SELECT * FROM image_tasks WHERE id = ? AND status = ?", (task_id, status))
    return found[0] if found else None


def gone(stack, task_id):
    answer = requests.get(f"{stack.web_url}/api/tasks/{task_id}", headers=stack.user, timeout=10)
    return answer.status_code == 404 and not events(stack, task_id)


def test_periodic_prune_takes_finished_tasks_and_leaves_live_ones_intact(tmp_path, db_env):
    """Finished tasks (completed, failed for good) go KEEP_SECONDS after their last change, with their events;
    tasks still processing or pending, however old, stay whole and run to the end (and are pruned after)."""
    with Stack(tmp_path, RETENTION_DAYS=f"{KEEP_SECONDS / 86_400:.12f}", RETENTION_INTERVAL_SECONDS=0.5,
               **db_env) as stack:
        stack.start_temporal()
        stack.start_fakes()
        stack.start_web()
        stack.start_worker()
        stack.start_processor()
        quick = [stack.create("image", f"a quick kite {n}") for n in range(3)] + [stack.create("video", "a whale")]
        slow = [stack.create("video", "[slow:8] a slow whale"), stack.create("image", "[slow:8] a slow kite")]
        wait_until(lambda: all(stack.task(t)["status"] == "completed" for t in quick), timeout=60, interval=0.1,
                   message="the quick tasks completed")
        rejected = stack.create("image", "[reject] a forbidden kite")
        assert wait_until(lambda: row(stack, rejected, "failed"), timeout=30, interval=0.1,
                          message="the rejected task failed")["retryable"] == 0  # failed for good
        wait_until(lambda: all(stack.task(t)["status"] == "processing" for t in slow), timeout=30, interval=0.1,
                   message="the slow tasks processing")
        stack.kill("processor")  # nothing claims these: they stay pending
        pending = [stack.create("video", "a patient whale"), stack.create("image", "a patient kite")]
        live = {t: events(stack, t) for t in slow + pending}

        wait_until(lambda: all(gone(stack, t) for t in quick + [rejected]), timeout=30, interval=0.2,
                   message="the finished tasks pruned with their events")
        time.sleep(KEEP_SECONDS + 1)  # the pending tasks are now older than the retention too: still kept
        for task_id, seen in live.items():
            task = stack.task(task_id)
            assert task["status"] == ("processing" if task_id in slow else "pending"), task
            assert events(stack, task_id) == seen

        stack.start_processor()  # the live tasks run to the end, then go the same way
        wait_until(lambda: all(gone(stack, t) for t in live), timeout=90, interval=0.2,
                   message="the formerly live tasks completed and then pruned")
        left = [dbaccess.query(stack.database, f"SELECT COUNT(*) AS n FROM {t}")[0]["n"]
                for t in ("video_tasks", "image_tasks", "task_events")]
        assert left == [0, 0, 0]
        wait_until(lambda: re.search(r"^web_pruned_tasks_total 9\.0$", requests.get(
            f"{stack.web_url}/metrics", timeout=10).text, re.M), message="the metric counts them (after the commit)")

    log = (tmp_path / "web.log").read_text()
    leaders = re.findall(r'msg="this process runs the periodic prune".* pid=(\d+)', log)
    assert len(leaders) == 1, log  # two gunicorn workers, one prune at a time
    runs = re.findall(r'msg="pruned finished tasks" tasks=(\d+) .* pid=(\d+)', log)
    assert runs and {pid for _, pid in runs} == set(leaders)
    assert sum(int(n) for n, _ in runs) == 9  # 4 quick, 1 rejected, 2 slow, 2 pending
