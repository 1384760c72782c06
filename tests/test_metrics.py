"""Prometheus metrics of the three processes, parsed with prometheus_client's own parser."""

from __future__ import annotations

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import AUTH, BACKENDS, VIDEO, wait_until


def pytest_generate_tests(metafunc):
    """The web process's metrics (counted from the store of tasks) on both stores, with the same assertions."""
    if "web" in metafunc.fixturenames:
        metafunc.parametrize("backend", BACKENDS, indirect=True)


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.slow
def test_web_metrics_move_as_tasks_flow_across_gunicorn_workers(web):
    app = web()
    scrape = lambda: samples(requests.get(f"{app.url}/metrics", timeout=10).text)
    before = scrape()
    assert value(before, "web_tasks", integration=VIDEO, status="pending") == 0
    ids = [app.create() for _ in range(3)]
    claim = requests.post(f"{app.url}/api/{VIDEO}/claimPendingTasks", json={"limit": 2}, headers=AUTH, timeout=10)
    assert len(claim.json()["tasks"]) == 2
    first = claim.json()["tasks"][0]["id"]
    assert app.report(first, "processing", attempt=1, taskId="cgt-1").status_code == 200
    assert app.report(first, "processing", attempt=1).status_code == 200  # a duplicate
    assert app.report(first, "completed", attempt=2).status_code == 409  # a stale attempt
    assert app.report("no-such-task", "completed", attempt=1).status_code == 404

    # Two gunicorn workers served these: every scrape adds up both processes' counts.
    for _ in range(4):
        after = scrape()
        assert value(after, "web_tasks", integration=VIDEO, status="pending") == 1
        assert value(after, "web_tasks", integration=VIDEO, status="queued") == 1
        assert value(after, "web_tasks", integration=VIDEO, status="processing") == 1
        assert value(after, "web_oldest_pending_age_seconds", integration=VIDEO) > 0
        assert value(after, "web_claims_total", integration=VIDEO) == 2
        assert value(after, "web_reports_total", integration=VIDEO, kind="progress", outcome="accepted",
                     reason="") == 1
        assert value(after, "web_reports_total", integration=VIDEO, kind="progress", outcome="duplicate",
                     reason="") == 1
        assert value(after, "web_reports_total", integration=VIDEO, kind="progress", outcome="refused",
                     reason="stale_attempt") == 1
        assert value(after, "web_reports_total", integration=VIDEO, kind="progress", outcome="refused",
                     reason="not_found") == 1
    assert ids


@pytest.mark.slow
def test_waiting_long_polls_are_counted_while_they_wait(web):
    import threading

    app = web()
    poll = threading.Thread(target=requests.get, args=(f"{app.url}/api/{VIDEO}/fetchPendingTasks?waitMs=3000",),
                            kwargs={"headers": AUTH, "timeout": 10})
    poll.start()
    wait_until(lambda: value(samples(requests.get(f"{app.url}/metrics", timeout=10).text),
                             "web_long_polls_waiting", integration=VIDEO) == 1, message="one waiting long poll")
    poll.join()
    assert value(samples(requests.get(f"{app.url}/metrics", timeout=10).text),
                 "web_long_polls_waiting", integration=VIDEO) == 0


def test_metrics_token_restricts_the_web_metrics(db_path):
    from app import create_app
    from tests.conftest import SECRETS

    app = create_app({"DATABASE_PATH": db_path, **SECRETS, "METRICS_TOKEN": "m-secret"})
    client = app.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    answer = client.get("/metrics", headers={"Authorization": "Bearer m-secret"})
    assert answer.status_code == 200 and "web_tasks" in answer.text


def test_metrics_are_open_without_a_token(client):
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.content_type.startswith("text/plain")
    assert value(samples(answer.text), "web_tasks", integration=VIDEO, status="pending") == 0


def scrape(port: int, token: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = requests.get(f"http://127.0.0.1:{port}/metrics", headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    return samples(answer.text)


def status_of(url: str) -> int | None:
    try:
        return requests.get(url, timeout=2).status_code
    except requests.RequestException:
        return None


def total(found: dict, name: str, **labels) -> float:
    """The sum of every sample called `name` whose labels include `labels`."""
    return sum(v for (n, sample_labels), v in found.items()
               if n == name and set(labels.items()) <= set(sample_labels))


@pytest.mark.slow
def test_processor_and_worker_metrics_move_as_tasks_flow(tmp_path):
    from dev.stack import Stack, free_port

    ports = {"PROCESSOR_METRICS_PORT": free_port(), "WORKER_METRICS_PORT": free_port()}
    with Stack(tmp_path, METRICS_TOKEN="scrape-me", **ports).start_all() as stack:
        processor, worker = ports["PROCESSOR_METRICS_PORT"], ports["WORKER_METRICS_PORT"]
        for port in (worker, processor):
            wait_until(lambda port=port: status_of(f"http://127.0.0.1:{port}/metrics") == 401, timeout=30,
                       message="a metrics port, guarded by METRICS_TOKEN")
        before = scrape(processor, "scrape-me")
        assert total(before, "processor_claimed_tasks_total") == 0

        ids = [stack.create("video", "a fox [ratelimit:1]"), stack.create("image", "a kite")]
        wait_until(lambda: all(stack.task(t)["status"] == "completed" for t in ids), timeout=60, message="done")
        found = wait_until(lambda: (f := scrape(processor, "scrape-me"))
                           and total(f, "processor_workflows_started_total") == 2 and f, message="starts counted")
        assert total(found, "processor_claimed_tasks_total", integration=VIDEO) == 1
        assert total(found, "processor_claim_to_started_seconds_count") == 2
        assert total(found, "processor_start_failures_total") == 0

        work = scrape(worker, "scrape-me")
        assert total(work, "worker_provider_call_seconds_count", operation="create", outcome="ok") == 2
        assert total(work, "worker_provider_call_seconds_count", operation="poll") >= 2
        assert total(work, "worker_provider_errors_total", integration=VIDEO, operation="create", status="429",
                     code="RateLimitExceeded.EndpointRPMExceeded") == 1
        sdk = {name for name, _ in work if name.startswith("temporal_")}
        assert any(name.startswith("temporal_workflow_completed") for name in sdk), sorted(sdk)[:20]
        assert any(name.startswith("temporal_activity_execution_latency") for name in sdk), sorted(sdk)[:20]


@pytest.mark.parametrize("program", ["processor.py", "workflows.py"])
def test_a_metrics_port_in_use_stops_the_process_with_one_line(program):
    import os
    import socket
    import subprocess
    import sys

    from settings import ROOT

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "INTERNAL_API_TOKEN": "metrics-internal-token", "FANGZHOU_API_KEY": "k",
               "NANOBANANA_API_KEY": "k",
               "PROCESSOR_METRICS_PORT": str(port), "WORKER_METRICS_PORT": str(port)}
        result = subprocess.run([sys.executable, program], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=60)
    assert result.returncode == 2
    assert f"config error: cannot serve metrics on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr
