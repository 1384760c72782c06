"""The processor against real parts: gunicorn serving the app, the Temporal dev server.

No worker runs here: started workflows simply wait in Temporal, which is all
the processor is responsible for.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from dev import dbaccess
from dev.stack import free_port, stop, temporal_server, workflow_runs
from integrations import load_integrations
from processor import ProcessorSettings, StartResult, TaskProcessor, TemporalUnavailable, start_workflow
from settings import ROOT, load_config
from tests.conftest import AUTH, BACKENDS, IMAGE, TOKEN, VIDEO, db_config, wait_until

pytestmark = [pytest.mark.slow,
              pytest.mark.parametrize("backend", BACKENDS, indirect=True)]  # the same assertions on both stores


def processor_for(url, temporal, instance="test", **env):
    overrides = {"MAIN_ENDPOINT": url, "INTERNAL_API_TOKEN": TOKEN, "TEMPORAL_ADDRESS": temporal,
                 "POLL_INTERVAL_MS": 100, **env}
    config = load_config(overrides=overrides)
    processor = TaskProcessor(ProcessorSettings.from_config(config, instance_id=instance))
    processor.load([i.get_pull_mode_config() for i in load_integrations(config)])
    return processor


def process_env(url, temporal, **env):
    return {**os.environ, "MAIN_ENDPOINT": url, "INTERNAL_API_TOKEN": TOKEN, "TEMPORAL_ADDRESS": temporal,
            "POLL_INTERVAL_MS": "100", **{k: str(v) for k, v in env.items()}}


def wf_id(namespace, task_id):
    return f"{namespace}:{task_id}"


def test_fetch_carries_limit_and_token(web, temporal):
    app = web()
    ids = [app.create() for _ in range(5)]
    processor = processor_for(app.url, temporal, BATCH_SIZE=3)
    try:
        assert processor.run_once() is True  # a full batch: more work is waiting
    finally:
        processor.stop()
    rows = app.rows()
    assert sorted(rows[i]["status"] for i in ids) == ["pending"] * 2 + ["queued"] * 3
    events = app.events("queued")
    assert len(events) == 3 and {e["attempt"] for e in events} == {1}

    intruder = processor_for(app.url, temporal, INTERNAL_API_TOKEN="a-wrong-internal-token")
    try:
        with pytest.raises(RuntimeError, match="401"):
            intruder.run_once()
    finally:
        intruder.stop()
    assert len(app.events("queued")) == 3


def test_failed_fetches_are_survived(web, temporal):
    closed = processor_for(f"http://127.0.0.1:{free_port()}", temporal)
    closed.start(closed.pull_configs)
    wait_until(lambda: closed.failures >= 2, message="two failed polls (connection refused)")
    assert closed.running
    closed.stop()

    app = web()
    task_id = app.create()
    # Break the app: fetch answers 500.
    dbaccess.execute(app.db_path, "ALTER TABLE video_tasks RENAME TO video_tasks_away")
    processor = processor_for(app.url, temporal)
    processor.start(processor.pull_configs)
    try:
        wait_until(lambda: processor.failures >= 2, message="two failed polls (500)")
        dbaccess.execute(app.db_path, "ALTER TABLE video_tasks_away RENAME TO video_tasks")
        wait_until(lambda: app.task(task_id)["status"] == "queued", message="claim after recovery")
    finally:
        processor.stop()


def test_fifty_tasks_each_get_one_workflow_carrying_the_attempt(web, temporal):
    app = web()
    created = [(ns, app.create(ns)) for ns in (VIDEO, IMAGE) for _ in range(25)]
    processor = processor_for(app.url, temporal)
    processor.start(processor.pull_configs)
    try:
        wait_until(lambda: processor.stats["started"] >= 50, timeout=60, message="50 workflows started")
    finally:
        processor.stop()
    for ns, task_id in created:
        assert app.task(task_id)["status"] == "queued"
        assert app.rows(ns)[task_id]["dispatched_at"] is not None  # the start was confirmed
    runs = workflow_runs(temporal, [wf_id(ns, t) for ns, t in created])
    for ns, task_id in created:
        [run] = runs[wf_id(ns, task_id)]
        assert run["status"] == "RUNNING"
        assert run["attempt"] == 1
        assert run["params"]["apiCallId"] == task_id
        assert run["type"] == ("VideoPollingWorkflow" if ns == VIDEO else "ImagePollingWorkflow")
        assert TOKEN not in json.dumps(run["params"])


def test_two_processors_one_claim_and_one_workflow_per_task(web, temporal):
    app = web()
    created = [(ns, app.create(ns)) for ns in (VIDEO, IMAGE) for _ in range(50)]
    processes = [subprocess.Popen([sys.executable, "processor.py"], cwd=ROOT,
                                  env=process_env(app.url, temporal, HOSTNAME=f"p{n}", BATCH_SIZE=5),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for n in (1, 2)]
    try:
        wait_until(lambda: len(app.events("queued")) >= 100, timeout=60, message="100 claims")
        wait_until(lambda: sum(len(r) for r in workflow_runs(temporal, [wf_id(*c) for c in created]).values())
                   >= 100, timeout=30, message="100 workflows visible")
    finally:
        codes = [stop(p) for p in processes]
        logs = [p.stderr.read().decode() for p in processes]
    assert codes == [0, 0], logs
    claims = Counter(e["task_id"] for e in app.events("queued"))
    assert sorted(claims.values()) == [1] * 100
    runs = workflow_runs(temporal, [wf_id(*c) for c in created])
    assert all(len(r) == 1 and r[0]["attempt"] == 1 for r in runs.values())
    assert "msg=starting instance=processor-p1" in logs[0] and "msg=starting instance=processor-p2" in logs[1]


def test_already_started_run_of_an_earlier_attempt_is_replaced(web, temporal):
    app = web(STUCK_TIMEOUT_SECONDS=1)
    task_id = app.create()
    assert app.report(task_id, "queued").json()["attempt"] == 1
    pull = next(i.get_pull_mode_config() for i in
                load_integrations(load_config(overrides={"INTERNAL_API_TOKEN": TOKEN, "MAIN_ENDPOINT": app.url}))
                if i.namespace == VIDEO)

    async def start(attempt):
        from temporalio.client import Client
        client = await Client.connect(temporal)
        return await start_workflow(client, pull, {"id": task_id, "requestParams": {}}, attempt)

    assert asyncio.run(start(1)) == StartResult.STARTED  # a processor started attempt 1, then stalled
    assert asyncio.run(start(1)) == StartResult.ALREADY_RUNNING  # the same start again is a no-op

    processor = processor_for(app.url, temporal)
    processor.start(processor.pull_configs)
    try:
        wait_until(lambda: app.task(task_id)["attempts"] == 2, timeout=15, message="stuck claim rescued")
        wait_until(lambda: processor.stats["started"] >= 1, message="attempt 2 started")
    finally:
        processor.stop()
    runs = sorted(workflow_runs(temporal, [wf_id(VIDEO, task_id)])[wf_id(VIDEO, task_id)],
                  key=lambda r: r["attempt"])
    assert [(r["attempt"], r["status"]) for r in runs] == [(1, "TERMINATED"), (2, "RUNNING")]
    assert asyncio.run(start(1)) == StartResult.ALREADY_RUNNING  # a stale starter never kills attempt 2


def test_start_failure_is_reported_as_failed(web, temporal):
    app = web()
    task_id = app.create()
    processor = processor_for(app.url, temporal, TEMPORAL_NAMESPACE="no-such-namespace")
    try:
        processor.run_once()
    finally:
        processor.stop()
    task = app.task(task_id)
    assert task["status"] == "failed"
    assert task["attempts"] == 1
    assert task["error"] == "The provider is unavailable; retrying"  # users: the public message
    stored = app.rows()[task_id]["error"]  # operators: the whole text
    assert stored.startswith("Workflow start failed: ") and "no-such-namespace" in stored
    assert [e["status"] for e in app.events() if e["task_id"] == task_id] == ["pending", "queued", "failed"]


def test_processor_loads_no_database_module_and_opens_no_database_file(web, temporal):
    app = web()
    task_id = app.create()
    code = """
import json, sys, threading
opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" else None)
connects = []
sys.addaudithook(lambda event, args: connects.append(event) if event.startswith("sqlite3") else None)
import processor
from integrations import load_integrations
from settings import load_config
config = load_config()
p = processor.TaskProcessor(processor.ProcessorSettings.from_config(config, instance_id="audit"))
p.load([i.get_pull_mode_config() for i in load_integrations(config)])
p.run_once()
p.stop()
print(json.dumps({"modules": sorted(m for m in sys.modules
                                    if m.split(".")[0] in ("sqlite3", "_sqlite3", "sqlite_utils", "web", "app",
                                                             "psycopg", "psycopg_pool", "psycopg_binary")),
                  "db_files": [f for f in opened if f.endswith((".db", ".db-wal", ".db-shm", ".sqlite"))],
                  "sqlite_events": connects, "claimed": p.stats["claimed"]}))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env=process_env(app.url, temporal, **db_config(app.db_path)), timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"modules": [], "db_files": [], "sqlite_events": [], "claimed": 1}
    assert app.task(task_id)["status"] == "queued"


def test_temporal_outage_burns_no_attempt(web, tmp_path):
    app = web()
    port = free_port()
    address = f"127.0.0.1:{port}"
    processor = processor_for(app.url, address)
    processor.start(processor.pull_configs)  # Temporal is not running yet
    try:
        first = app.create()
        wait_until(lambda: processor.failures >= 2, message="polls refused while Temporal is down")
        assert (app.task(first)["status"], app.task(first)["attempts"]) == ("pending", 0)

        with temporal_server(tmp_path / "t.db", tmp_path / "t.log", port=port):
            wait_until(lambda: app.task(first)["status"] == "queued", timeout=30, message="dispatch after start")
        # A start proves Temporal up for HEALTHY_FOR_SECONDS; a claim inside that window is
        # held, not burned (next test). Past it, the processor claims nothing.
        wait_until(lambda: processor.bridge.fresh_for() < 0, message="the last proof of health is stale")
        failures_before = processor.failures
        second = app.create()
        wait_until(lambda: processor.failures > failures_before + 1, timeout=30, message="outage noticed")
        assert (app.task(second)["status"], app.task(second)["attempts"]) == ("pending", 0)

        with temporal_server(tmp_path / "t.db", tmp_path / "t.log", port=port):
            ids = [wf_id(VIDEO, first), wf_id(VIDEO, second)]
            runs = wait_until(lambda: (r := workflow_runs(address, ids)) and all(r.values()) and r,
                              timeout=30, message="both workflows visible after the restart")
    finally:
        processor.stop()
    assert [len(r) for r in runs.values()] == [1, 1]
    assert (app.task(first)["attempts"], app.task(second)["attempts"]) == (1, 1)


def claim_past_the_health_check(processor):
    """Claim and start the video backlog as `poll` would, without its health check (as if it had been 250 ms old)."""
    video = processor.pull_configs[0]
    room = processor.in_flight.reserve(10, processor.stopping)
    claimed = processor.claim(video, room)
    processor.in_flight.release(room - len(claimed))
    processor.dispatch(video, claimed)


def test_a_claim_landing_as_temporal_goes_down_is_held_renewed_and_started_later(web, tmp_path):
    """The health check is up to 250 ms old when a claim lands: a start that then finds Temporal
    gone must not report the attempt failed, but start it with the same attempt once Temporal is back.
    Temporal stays down for over two stuck timeouts: the processor's renewals keep the claim from the stuck
    rescue (which is for a dead processor's claims), so no other processor takes it with a second attempt."""
    app = web(STUCK_TIMEOUT_SECONDS=5)
    port = free_port()
    address = f"127.0.0.1:{port}"
    processor = processor_for(app.url, address)
    try:
        with temporal_server(tmp_path / "t.db", tmp_path / "t.log", port=port):
            processor.bridge.ensure_healthy()  # Temporal proven up (connects the client)
        task_id = app.create()
        processor.start_renewal()  # before the claim, as start() does: the first answer says the timeout
        claim_past_the_health_check(processor)
        wait_until(lambda: processor.stats["held"] == 1, timeout=30, message="the start held, not failed")
        assert processor.bridge.fresh_for() < 0  # no more claims until a health check passes
        claimed_at = app.rows()[task_id]["started_at"]
        outage_ends = time.monotonic() + 11
        while time.monotonic() < outage_ends:  # another processor's fetch finds nothing to rescue
            pending = app.http.get(f"{app.url}/api/{VIDEO}/fetchPendingTasks", headers=AUTH, timeout=10).json()
            assert pending["tasks"] == [], pending
            time.sleep(0.2)
        assert app.rows()[task_id]["started_at"] > claimed_at  # renewed
        assert (app.task(task_id)["status"], app.task(task_id)["attempts"]) == ("queued", 1)
        with temporal_server(tmp_path / "t.db", tmp_path / "t.log", port=port):
            wait_until(lambda: processor.stats["started"] == 1, timeout=60, message="held start done")
            [run] = wait_until(lambda: workflow_runs(address, [wf_id(VIDEO, task_id)])[wf_id(VIDEO, task_id)],
                               message="the run visible in Temporal's list (eventually consistent)")
    finally:
        processor.stop()
    assert run["attempt"] == 1 and processor.stats["start_failed"] == 0 and processor.renewals.count() == 0
    assert [(e["status"], e["attempt"]) for e in app.events() if e["task_id"] == task_id] == [
        ("pending", 0), ("queued", 1)]
    assert app.rows()[task_id]["dispatched_at"] is not None  # confirmed when the processor stopped


def test_renewals_follow_the_answered_timeout_and_stop_for_a_claim_taken_over_or_moved_on(web, temporal):
    """A claim is renewed a third of its usable window (the timeout the claim answer gave, less a second of
    stamp grain) after the last renewal; no longer once another processor's rescue took it (409), or once
    the task moved on (here an operator failed it)."""
    app = web(STUCK_TIMEOUT_SECONDS=7)
    processor = processor_for(app.url, temporal)
    rescuer = processor_for(app.url, temporal, instance="rescuer")
    video = processor.pull_configs[0]
    renewals = processor.renewals
    try:
        taken, failed = app.create(), app.create()
        claims = processor.claim(video, 2)  # the claims alone: no start, so they stay held
        claimed_at = app.rows()[taken]["started_at"]
        assert renewals.due(video.integration, time.monotonic()) == []
        wait_until(lambda: renewals.due(video.integration, time.monotonic()), timeout=10, message="due (2 s)")
        assert renewals.renew(video) == 2 and renewals.due(video.integration, time.monotonic()) == []
        assert app.rows()[taken]["started_at"] > claimed_at
        dbaccess.execute(app.db_path, "UPDATE video_tasks SET started_at = started_at - 100 WHERE id = ?", (taken,))
        [rescue] = rescuer.claim(video, 1)  # thought dead: rescued
        assert app.report(failed, "failed", attempt=1, retryable=False).status_code == 200
        wait_until(lambda: renewals.due(video.integration, time.monotonic()), timeout=10, message="due again")
        assert renewals.renew(video) == 0 and renewals.count() == 0  # refused or moved on: renewed no more
    finally:
        processor.stop()
        rescuer.stop()
    assert [c.attempt for c in claims] == [1, 1] and rescue.task["id"] == taken and rescue.attempt == 2


def test_a_claim_waits_for_work_only_while_temporal_is_proven_up(web, tmp_path):
    """With a fresh proof the wait happens inside the claim, never longer than the proof lasts;
    with a stale one the processor waits without claiming and checks Temporal first."""
    app = web()
    port = free_port()
    address = f"127.0.0.1:{port}"
    processor = processor_for(app.url, address, POLL_INTERVAL_MS=5000)
    video = processor.pull_configs[0]
    try:
        with temporal_server(tmp_path / "t.db", tmp_path / "t.log", port=port):
            processor.bridge.ensure_healthy()
            threading.Timer(0.05, app.create).start()
            began = time.monotonic()
            processor.poll(video, wait_ms=5000)  # the claim waited, and took the task that came
            assert processor.stats["claimed"] == 1 and time.monotonic() - began < 1
            wait_until(lambda: processor.stats["started"] == 1, message="its workflow started")
        wait_until(lambda: processor.bridge.fresh_for() < 0, message="the proof of health is stale")
        late = threading.Timer(0.3, app.create)
        late.start()
        began = time.monotonic()
        with pytest.raises(TemporalUnavailable):
            processor.poll(video, wait_ms=5000)  # woke for the task, checked Temporal, claimed nothing
        late.join()
        assert time.monotonic() - began >= 0.3
    finally:
        processor.stop()
    assert sorted(t["attempts"] for t in app.rows().values()) == [0, 1]
    assert processor.stats["claimed"] == 1


def test_abandoned_claim_is_rescued_with_one_workflow(web, temporal):
    app = web(STUCK_TIMEOUT_SECONDS=2)
    task_id = app.create()
    assert app.report(task_id, "queued").status_code == 200  # claimed, then its processor died
    processor = processor_for(app.url, temporal)
    processor.start(processor.pull_configs)
    try:
        wait_until(lambda: processor.stats["started"] == 1, timeout=20, message="rescue")
    finally:
        processor.stop()
    assert app.task(task_id)["attempts"] == 2
    [run] = workflow_runs(temporal, [wf_id(VIDEO, task_id)])[wf_id(VIDEO, task_id)]
    assert run["attempt"] == 2


def test_sigterm_mid_batch_exits_zero_and_leaves_no_claim_without_a_workflow(web, temporal):
    app = web()
    for _ in range(150):
        app.create(VIDEO)
    process = subprocess.Popen([sys.executable, "processor.py"], cwd=ROOT,
                               env=process_env(app.url, temporal, BATCH_SIZE=20, HOSTNAME="sig"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_until(lambda: len(app.events("queued")) >= 20, timeout=30, message="first claims")
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=15)
    log = process.stderr.read().decode()
    assert code == 0, log
    assert "shutting down" in log and "stopped" in log
    rows = app.rows()
    queued = [t for t, row in rows.items() if row["status"] == "queued"]
    assert len(queued) >= 20
    assert all(row["attempts"] == 0 for row in rows.values() if row["status"] == "pending")
    runs = workflow_runs(temporal, [wf_id(VIDEO, t) for t in queued])
    assert all(len(r) == 1 for r in runs.values()), [t for t, r in runs.items() if len(r) != 1]


def test_a_declined_long_poll_waits_in_the_processor_without_spinning(web, temporal, tmp_path):
    """A web process that holds no long poll (WEB_LONG_POLLS=0) answers each at once with `retryAfterMs`:
    the processor then waits on its own side, whether it waits with a fetch or inside a claim (a proof
    of Temporal's health kept fresh, as under steady work), so it asks a few times a second, not
    hundreds; it still claims work as it comes, and stops at once."""
    app = web(WEB_LONG_POLLS=0, GUNICORN_CMD_ARGS="--access-logfile -")
    log = tmp_path / "gunicorn.log"  # where the web fixture writes

    def polls() -> int:
        with open(log) as lines:
            return sum("PendingTasks" in line for line in lines)

    processor = processor_for(app.url, temporal, POLL_INTERVAL_MS=1000)
    processor.start(processor.pull_configs)
    fresh, stop_refreshing = threading.Event(), threading.Event()

    def keep_proof_fresh():
        while not stop_refreshing.wait(0.02):
            if fresh.is_set():
                processor.bridge.succeeded()

    refresher = threading.Thread(target=keep_proof_fresh, daemon=True)
    refresher.start()
    rates = {}
    try:
        for way in ("fetch", "claim"):  # with no fresh proof it waits with a fetch; with one, in the claim
            if way == "claim":
                fresh.set()
            time.sleep(1.5)
            before, began = polls(), time.monotonic()
            time.sleep(3)
            rates[way] = (polls() - before) / (time.monotonic() - began)
        task_id = app.create()
        wait_until(lambda: app.task(task_id)["status"] == "queued", timeout=5, message="a declined poll claims")
    finally:
        stop_refreshing.set()
        began = time.monotonic()
        processor.stop()
        stopped_in = time.monotonic() - began
    # Declined, a fetch of waitMs 1000 waits 1-1.5 s here and a claim of waitMs <= 240 at most 1.5 times
    # that: two integrations make ~2 and ~8 requests a second. Spinning would be hundreds.
    assert rates["fetch"] < 6 and rates["claim"] < 25, rates
    assert stopped_in < 3, stopped_in


def test_stopping_does_not_wait_for_an_idle_long_poll_and_claims_nothing_after(web, temporal):
    """An idle processor waits on the server up to POLL_INTERVAL_MS (20 s by default) with a fetch that claims
    nothing: stopping returns at once instead of waiting that out, and a task that arrives as the stopped
    processor's fetch is still out wakes it but is left for a live processor."""
    from tests.test_long_polls import waiting_polls

    app = web()
    processor = processor_for(app.url, temporal, POLL_INTERVAL_MS=20_000)
    processor.start(processor.pull_configs)
    wait_until(lambda: waiting_polls(app.url) == 2, message="both integrations' idle polls wait")
    began = time.monotonic()
    processor.stop()
    stopped_in = time.monotonic() - began
    ids = [app.create(VIDEO), app.create(IMAGE)]  # wake both polls, which are still out
    wait_until(lambda: not processor.running, message="the poll threads ended")
    assert stopped_in < 2, stopped_in
    assert [app.task(task_id)["status"] for task_id in ids] == ["pending", "pending"]
    assert processor.stats["claimed"] == 0
