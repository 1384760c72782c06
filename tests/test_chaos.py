"""Chaos: 200 tasks while processes are killed and restarted at random moments; then the invariants.

During the run the processor is SIGKILLed and restarted three times, the
worker SIGKILLed and restarted twice, the web process restarted twice and the
Temporal server restarted once. Afterwards dev.invariants reads the database
and Temporal: no task lost, one `queued` event per attempt, never two runs of
a task's workflow open at once, no completed task run twice.
"""

import os
import random
import signal
import threading
import time

import pytest
import requests

from dev.invariants import check
from dev.stack import Stack
from tests.conftest import BACKENDS, wait_until

pytestmark = [pytest.mark.slow,
              pytest.mark.parametrize("backend", BACKENDS, indirect=True)]  # the same assertions on both stores
TASKS = 200
MAX_ATTEMPTS = 5


def make_prompts(rng):
    """Mostly ordinary tasks; some told to fail every time, some to fail once."""
    prompts = []
    for n in range(TASKS):
        kind = "video" if n % 2 else "image"
        roll = rng.random()
        marker = " [fail]" if roll < 0.06 else (" [failfirst:1]" if roll < 0.12 else "")
        prompts.append((kind, f"chaos {n}{marker}"))
    return prompts


def create_with_retry(stack, kind, prompt, deadline):
    """Creating a task while the web process restarts: retry refused connections only."""
    while time.monotonic() < deadline:
        try:
            return stack.create(kind, prompt)
        except requests.ConnectionError:
            time.sleep(0.2)
    raise TimeoutError(f"could not create {prompt!r}")


def test_chaos(tmp_path, capsys, db_env):
    seed = int(os.environ.get("CHAOS_SEED", "20261127"))
    rng = random.Random(seed)
    prompts = make_prompts(rng)
    with Stack(tmp_path, STUCK_TIMEOUT_SECONDS=15, MAX_ATTEMPTS=MAX_ATTEMPTS, BATCH_SIZE=10, **db_env) as stack:
        stack.start_all()
        ids: dict[str, str] = {}
        deadline = time.monotonic() + 120

        def producer():
            for kind, prompt in prompts:
                ids[create_with_retry(stack, kind, prompt, deadline)] = prompt
                time.sleep(0.1)

        creating = threading.Thread(target=producer)
        creating.start()

        def restart_processor():
            stack.kill("processor", signal.SIGKILL)
            stack.start_processor()

        def restart_worker():
            stack.kill("worker", signal.SIGKILL)
            time.sleep(rng.uniform(0, 2))
            stack.start_worker()

        def restart_web():
            stack.kill("web", signal.SIGTERM)
            stack.start_web()

        def restart_temporal():
            stack.kill("temporal", signal.SIGKILL)
            time.sleep(1)
            stack.start_temporal()

        actions = ([restart_processor] * 3 + [restart_worker] * 2 + [restart_web] * 2 + [restart_temporal])
        moments = sorted(rng.uniform(1, 30) for _ in actions)
        rng.shuffle(actions)
        started = time.monotonic()
        log = []
        for moment, action in zip(moments, actions, strict=True):
            time.sleep(max(0.0, started + moment - time.monotonic()))
            action()
            log.append(f"{time.monotonic() - started:5.1f}s {action.__name__}")
        creating.join()
        assert len(ids) == TASKS

        def all_settled():
            tasks = [stack.task(t) for t in ids]
            return all(t["status"] == "completed" or (t["status"] == "failed" and t["attempts"] >= MAX_ATTEMPTS)
                       for t in tasks) and tasks

        tasks = wait_until(all_settled, timeout=300, interval=1, message="every task settled")
        findings = check(stack.database, stack.temporal_address, MAX_ATTEMPTS)

    with capsys.disabled():
        print(f"\nchaos (CHAOS_SEED={seed}) actions:\n  " + "\n  ".join(log))
        print(findings.summary())
    by_prompt = {ids[t["id"]]: t for t in tasks}
    doomed = [p for _, p in prompts if p.endswith("[fail]")]
    assert all(by_prompt[p]["status"] == "failed" and by_prompt[p]["attempts"] == MAX_ATTEMPTS for p in doomed)
    assert all(by_prompt[p]["status"] == "completed" for _, p in prompts if p not in doomed)
    assert findings.ok, findings.summary()
