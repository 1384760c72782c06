"""A blocked integration (docs/design.md §3.4), judged by the web process: the `blocked` report hands the claim
back with its attempt refunded, nothing is claimed but one probe per interval, a job the provider accepts
ends the block, and an operator can end it (CLI); the dashboard and the CLI say why."""

from __future__ import annotations

import dataclasses

import pytest
from freezegun import freeze_time

from dev import dbaccess
from tests.conftest import BACKENDS, IMAGE, VIDEO
from tests.test_backoff import claim
from web import db, task_store

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)  # the same assertions on both stores
CREDITS = "Nano Banana 402: Insufficient Credits"


def use_policy(app, namespace, **changes):
    tables = app.extensions["task_tables"]
    tables[namespace] = dataclasses.replace(tables[namespace],
                                            policy=dataclasses.replace(tables[namespace].policy, **changes))


def block(tasks, namespace=IMAGE, prompt="a fox"):
    """A task claimed, and its create refused for the account: the `blocked` report."""
    task_id = tasks.create(namespace, prompt)
    assert claim(tasks, namespace) == [task_id]
    answer = tasks.report(task_id, "blocked", namespace, attempt=1, error=CREDITS)
    assert answer.status_code == 200, answer.json
    return task_id


def blocks(app):
    with app.app_context():
        return task_store.list_blocks(db.get_db())


def test_blocked_report_hands_the_claim_back_and_blocks_the_integration(app, tasks):
    with freeze_time() as clock:
        task_id = block(tasks)
        others = [tasks.create(IMAGE, f"waiting {n}") for n in range(3)]
        row = tasks.row(task_id, IMAGE)
        assert (row["status"], row["attempts"], row["attempts_refunded"], row["dispatched_at"]) == ("pending", 1, 1,
                                                                                                     None)
        assert [e["status"] for e in tasks.events(task_id)] == ["pending", "queued", "pending"]
        assert CREDITS in tasks.events(task_id)[-1]["error"]
        [shown] = blocks(app)
        assert (shown["integration"], shown["reason"], shown["taskId"]) == (IMAGE, CREDITS, task_id)

        # Blocked: nothing is fetched or claimed, the other integration is untouched.
        assert tasks.fetch(IMAGE).json["tasks"] == [] and claim(tasks, IMAGE) == []
        assert tasks.fetch(IMAGE).json["blocked"]["reason"] == CREDITS
        video = tasks.create(VIDEO)
        assert claim(tasks, VIDEO) == [video]

        # The probe: once due, one task (of the oldest, the one handed back least: not the one that met the
        # block), then none for an interval.
        clock.tick(31)
        assert [t["id"] for t in tasks.fetch(IMAGE).json["tasks"]] == [others[0]]
        assert claim(tasks, IMAGE, limit=10) == [others[0]]
        assert claim(tasks, IMAGE, limit=10) == []
        assert tasks.report(task_id, "queued", IMAGE).status_code == 409  # the single-claim path obeys it too

        # The provider accepts the probe's job: the block ends, every waiting task is claimable.
        answer = tasks.report(others[0], "processing", IMAGE, attempt=1, taskId="nb2-1")
        assert answer.status_code == 200
        assert blocks(app) == []
        assert sorted(claim(tasks, IMAGE, limit=10)) == sorted([task_id, *others[1:]])


def test_a_task_the_account_cannot_afford_does_not_hold_the_block(app, tasks):
    """A 4K image on a balance that covers 1K ones: that task is refused on every probe, the next probe
    takes another task, whose job the provider accepts, and the block ends."""
    with freeze_time() as clock:
        costly = block(tasks, prompt="a 4K panorama")
        cheap = tasks.create(IMAGE, "a 1K sketch")
        clock.tick(31)
        assert claim(tasks, IMAGE) == [cheap]
        assert tasks.report(cheap, "processing", IMAGE, attempt=1, taskId="nb2-2").status_code == 200
        assert blocks(app) == [] and claim(tasks, IMAGE) == [costly]


def test_only_a_new_job_ends_the_block(app, tasks):
    """A job created before the block completing, or an earlier attempt's job taken up again (resumed), says
    nothing about whether the provider accepts new work now."""
    running = tasks.create(IMAGE, "an earlier job")
    assert claim(tasks, IMAGE) == [running]
    assert tasks.report(running, "processing", IMAGE, attempt=1, taskId="nb2-old").status_code == 200
    block(tasks)
    assert tasks.report(running, "completed", IMAGE, attempt=1, taskId="nb2-old").status_code == 200
    assert len(blocks(app)) == 1

    resumed = tasks.create(IMAGE, "its earlier attempt's job is alive")
    dbaccess.execute(tasks.db_path, "UPDATE image_tasks SET external_id = 'nb2-x' WHERE id = ?", (resumed,))
    attempt = claim_unblocked(app, tasks, resumed)
    assert tasks.report(resumed, "processing", IMAGE, attempt=attempt, taskId="nb2-x").status_code == 200
    assert len(blocks(app)) == 1


def claim_unblocked(app, tasks, task_id):
    """Claim one task past the block (as if its probe were due); its new attempt."""
    dbaccess.execute(tasks.db_path, "UPDATE integration_blocks SET probe_at = 0")
    answer = tasks.report(task_id, "queued", IMAGE)
    assert answer.status_code == 200, answer.json
    return answer.json["attempt"]


def test_a_refused_probe_keeps_the_block_and_spends_no_attempt(app, tasks):
    use_policy(app, IMAGE, max_attempts=2)
    with freeze_time() as clock:
        task_id = block(tasks)
        for attempt in range(2, 6):  # more probes than the attempt limit: none is spent
            clock.tick(31)
            assert claim(tasks, IMAGE) == [task_id]
            assert tasks.report(task_id, "blocked", IMAGE, attempt=attempt, error=CREDITS).status_code == 200
        row = tasks.row(task_id, IMAGE)
        assert (row["status"], row["attempts"], row["attempts_refunded"]) == ("pending", 5, 5)
        clock.tick(31)
        assert claim(tasks, IMAGE) == [task_id]
        assert tasks.report(task_id, "processing", IMAGE, attempt=6, taskId="nb2-1").status_code == 200
        # A failure now is the first spent attempt of two: it is retried.
        assert tasks.report(task_id, "failed", IMAGE, attempt=6, error="Provider job failed: x").status_code == 200
        assert tasks.row(task_id, IMAGE)["retryable"] == 1
        assert tasks.client.get(f"/api/tasks/{task_id}").json["attemptsRefunded"] == 5


def test_blocked_report_is_fenced_and_idempotent(app, tasks):
    task_id = block(tasks)
    again = tasks.report(task_id, "blocked", IMAGE, attempt=1, error=CREDITS)
    assert again.status_code == 200 and again.json["duplicate"] is True
    assert tasks.row(task_id, IMAGE)["attempts_refunded"] == 1
    stale = tasks.report(task_id, "blocked", IMAGE, attempt=7, error=CREDITS)
    assert stale.status_code == 409
    assert tasks.report(task_id, "blocked", IMAGE, error=CREDITS).status_code == 400  # attempt required


def test_a_poll_that_meets_the_block_hands_back_a_processing_task_with_its_job(app, tasks):
    task_id = tasks.create(IMAGE)
    assert claim(tasks, IMAGE) == [task_id]
    assert tasks.report(task_id, "processing", IMAGE, attempt=1, taskId="nb2-7").status_code == 200
    assert tasks.report(task_id, "blocked", IMAGE, attempt=1, error=CREDITS).status_code == 200
    row = tasks.row(task_id, IMAGE)
    assert (row["status"], row["external_id"], row["attempts_refunded"]) == ("pending", "nb2-7", 1)


def test_users_see_a_waiting_task_not_a_failure(app, tasks):
    task_id = block(tasks)
    shown = tasks.client.get(f"/api/tasks/{task_id}").json
    assert shown["status"] == "pending" and "not accepting new work" in shown["error"]
    assert "402" not in shown["error"]  # the account's trouble is the operator's


def test_dashboard_and_cli_say_why_and_the_operator_resumes(app, tasks):
    task_id = block(tasks)
    page = tasks.client.get("/").get_data(as_text=True)
    assert 'data-blocked="image"' in page and CREDITS in page and "integrations resume image" in page
    runner = app.test_cli_runner()
    status = runner.invoke(args=["integrations", "status"])
    assert status.exit_code == 0
    [image_line] = [line for line in status.output.splitlines() if line.startswith("image")]
    assert "blocked" in image_line and CREDITS in image_line
    assert "running" in [line for line in status.output.splitlines() if line.startswith("video")][0]
    shown = runner.invoke(args=["tasks", "show", task_id])
    assert "attemptsRefunded:1" in shown.output and f"integration blocked: {CREDITS}" in shown.output

    resumed = runner.invoke(args=["integrations", "resume", "image"])
    assert resumed.exit_code == 0 and "resumed" in resumed.output and CREDITS in resumed.output
    assert blocks(app) == []
    assert claim(tasks, IMAGE) == [task_id]  # at once, no probe wait
    again = runner.invoke(args=["integrations", "resume", "image"])
    assert again.exit_code == 0 and "not blocked" in again.output
    assert "blocked" not in tasks.client.get("/").get_data(as_text=True).split("<h1>")[0]


def test_the_spent_attempts_decide_the_limit_in_the_fetch(app, tasks):
    """attempts - attempts_refunded is what the fetch and claim compare with maxAttempts (SQL and decide())."""
    use_policy(app, VIDEO, max_attempts=2)
    task_id = tasks.put(VIDEO, status="failed", attempts=3)
    assert claim(tasks, VIDEO) == []  # 3 spent of 2
    dbaccess.execute(tasks.db_path, "UPDATE video_tasks SET attempts_refunded = 2 WHERE id = ?", (task_id,))
    assert claim(tasks, VIDEO) == [task_id]  # 1 spent of 2
