"""`flask --app app tasks ...` over a real database, through Click's runner."""

import time

import pytest

from tests.conftest import BACKENDS, IMAGE, VIDEO

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)  # the same assertions on both stores


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def fleet(tasks):
    """One task in every status, in both integrations."""
    made = {}
    for namespace in (VIDEO, IMAGE):
        made[(namespace, "pending")] = tasks.put(namespace)
        made[(namespace, "queued")] = tasks.put(namespace, status="queued", attempts=1, started_at=int(time.time()))
        made[(namespace, "processing")] = tasks.put(namespace, status="processing", attempts=1)
        made[(namespace, "completed")] = tasks.put(namespace, status="completed", attempts=2)
        made[(namespace, "failed")] = tasks.put(namespace, status="failed", attempts=5)
    return made


def rows(output):
    return [line.split() for line in output.strip().splitlines()[1:]]


def test_list_shows_newest_first_with_filters(runner, fleet):
    result = runner.invoke(args=["tasks", "list"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].split() == ["ID", "INTEGRATION", "STATUS", "ATTEMPTS", "AGE", "LAST", "ERROR"]
    assert len(rows(result.output)) == 10

    failed = rows(runner.invoke(args=["tasks", "list", "--status", "failed"]).output)
    assert sorted(r[0] for r in failed) == sorted([fleet[(VIDEO, "failed")], fleet[(IMAGE, "failed")]])
    assert {r[2] for r in failed} == {"failed"}

    video = rows(runner.invoke(args=["tasks", "list", "--integration", "video"]).output)
    assert len(video) == 5 and {r[1] for r in video} == {"video"}
    both = rows(runner.invoke(args=["tasks", "list", "--integration", IMAGE, "--status", "queued"]).output)
    assert [r[0] for r in both] == [fleet[(IMAGE, "queued")]]
    assert len(rows(runner.invoke(args=["tasks", "list", "--limit", "3"]).output)) == 3


def test_list_with_nothing_to_show(runner, tasks):
    result = runner.invoke(args=["tasks", "list", "--status", "completed"])
    assert result.exit_code == 0 and result.output.strip() == "No tasks match."


@pytest.mark.parametrize("args", [
    ["tasks", "list", "--status", "done"],
    ["tasks", "list", "--integration", "audio"],
    ["tasks", "list", "--limit", "0"],
    ["tasks", "list", "--limit", "many"],
])
def test_bad_filters_are_usage_errors(runner, fleet, args):
    result = runner.invoke(args=args)
    assert result.exit_code == 2
    assert "Invalid value" in result.output


def test_show_prints_the_task_and_its_timeline(runner, tasks):
    task_id = tasks.create(prompt="a heron")
    tasks.report(task_id, "queued")
    tasks.report(task_id, "processing", attempt=1, taskId="cgt-77")
    result = runner.invoke(args=["tasks", "show", task_id])
    assert result.exit_code == 0, result.output
    assert f"id:            {task_id}" in result.output
    assert "status:        processing" in result.output
    assert '"prompt": "a heron"' in result.output
    timeline = [line.split()[2:4] for line in result.output.split("WHEN")[1].strip().splitlines()[1:]]
    assert timeline == [["pending", "0"], ["queued", "1"], ["processing", "1"]]


@pytest.mark.parametrize("command", ["show", "retry", "fail"])
@pytest.mark.parametrize("bad_id", ["nope", "x' OR '1'='1", ""])
def test_unknown_ids_are_clear_errors(runner, tasks, command, bad_id):
    result = runner.invoke(args=["tasks", command, bad_id])
    assert result.exit_code == 1
    assert f"Error: No task with id {bad_id!r}" in result.output


def test_retry_makes_an_exhausted_task_claimable_again(runner, tasks):
    task_id = tasks.put(status="failed", attempts=5)
    assert tasks.fetch().json["tasks"] == []

    result = runner.invoke(args=["tasks", "retry", task_id])

    assert result.exit_code == 0, result.output
    assert "pending again" in result.output
    assert tasks.row(task_id)["status"] == "pending"
    last = tasks.events(task_id)[-1]
    assert (last["status"], last["attempt"], last["error"]) == ("pending", 5, "retried by an operator")
    assert [t["id"] for t in tasks.fetch().json["tasks"]] == [task_id]
    assert tasks.report(task_id, "queued").json["attempt"] == 6


@pytest.mark.parametrize("status", ["completed", "pending", "processing"])
def test_retry_refuses_tasks_that_have_not_failed(runner, tasks, db_target, status):
    from tests.conftest import snapshot
    task_id = tasks.put(status=status, attempts=1)
    before = snapshot(db_target)
    result = runner.invoke(args=["tasks", "retry", task_id])
    assert result.exit_code == 1
    assert f"Cannot retry a {status} task: only a failed task can be retried" in result.output
    assert snapshot(db_target) == before


@pytest.mark.parametrize("status", ["queued", "processing"])
def test_fail_frees_a_stranded_task_for_another_attempt(runner, tasks, status):
    """Its workflow was terminated in the Temporal UI: nothing else would ever report on it."""
    task_id = tasks.put(status=status, attempts=1, started_at=int(time.time()), dispatched_at=time.time())
    assert tasks.fetch().json["tasks"] == []

    result = runner.invoke(args=["tasks", "fail", task_id, "--reason", "workflow terminated in the UI"])

    assert result.exit_code == 0, result.output
    assert "failed at attempt 1; a processor will claim it again" in result.output
    last = tasks.events(task_id)[-1]
    assert (last["status"], last["attempt"], last["error"]) == ("failed", 1, "workflow terminated in the UI")
    assert tasks.report(task_id, "processing", attempt=1).status_code == 409  # the old run is fenced
    assert [t["id"] for t in tasks.fetch().json["tasks"]] == [task_id]
    assert tasks.report(task_id, "queued").json["attempt"] == 2


def test_fail_no_retry_fails_for_good(runner, tasks):
    task_id = tasks.put(status="processing", attempts=1)
    result = runner.invoke(args=["tasks", "fail", task_id, "--no-retry"])
    assert result.exit_code == 0, result.output
    assert "it will not run again" in result.output
    assert tasks.row(task_id)["error"] == "failed by an operator"
    assert tasks.fetch().json["tasks"] == []


@pytest.mark.parametrize("status", ["pending", "completed", "failed"])
def test_fail_refuses_tasks_that_are_not_running(runner, tasks, db_target, status):
    from tests.conftest import snapshot
    task_id = tasks.put(status=status, attempts=0 if status == "pending" else 1)
    before = snapshot(db_target)
    result = runner.invoke(args=["tasks", "fail", task_id])
    assert result.exit_code == 1
    assert f"Cannot fail a {status} task: only a queued or processing task can be failed" in result.output
    assert snapshot(db_target) == before


def test_stats_counts_by_status_and_oldest_pending(runner, tasks, fleet):
    tasks.put(VIDEO, created_at=time.time() - 7200)  # a pending task two hours old
    result = runner.invoke(args=["tasks", "stats"])
    assert result.exit_code == 0, result.output
    table = {r[0]: r[1:] for r in rows(result.output)}
    assert table["video"][:7] == ["2", "1", "1", "1", "1", "0", "6"]
    assert table["video"][7] == "2h"
    assert table["image"][:7] == ["1", "1", "1", "1", "1", "0", "5"]
