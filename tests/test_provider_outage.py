"""An outage of the video provider longer than the previous release's retries, through the whole stack.

Apart from tests/test_provider_grade.py because it takes minutes on each task store: as a file of its own
`make test`'s workers (one file each at a time) can run it beside the rest."""

from __future__ import annotations

import time

import pytest

from dev.invariants import check
from dev.stack import Stack
from tests.conftest import BACKENDS
from tests.test_provider_grade import settled

pytestmark = [pytest.mark.slow,
              pytest.mark.parametrize("backend", BACKENDS, indirect=True)]  # the same assertions on both stores


def test_outage_longer_than_the_old_retries_fails_no_task_for_good(tmp_path, db_env):
    """The video provider is gone (connection refused) for 170 s, longer than the 5 x 31 s in which the
    previous release burned all five attempts. With backoff between attempts (base 30 s, shortened from
    240 s) no task fails for good, and each completes once the provider is back."""
    with Stack(tmp_path, RETRY_BASE_SECONDS=30, RETRY_MAX_SECONDS=120, **db_env).start_all() as stack:
        stack.kill("ark")
        outage_began = time.monotonic()
        ids = [stack.create("video", f"through the outage {n}") for n in range(6)]
        while time.monotonic() - outage_began < 170:  # watch the whole outage: no task may fail for good
            tasks = [stack.task(t) for t in ids]
            assert not [t for t in tasks if t["status"] == "failed" and t["retryAt"] is None], tasks
            time.sleep(5)
        assert all(t["attempts"] >= 2 for t in tasks)  # the outage did fail attempts: they waited it out
        spent = {t: stack.task(t)["attempts"] for t in ids}
        assert max(spent.values()) < 5, spent
        stack.start_fake("ark")
        tasks = settled(stack, ids, timeout=240)
        assert [t["status"] for t in tasks] == ["completed"] * 6
        assert all(t["attempts"] <= 5 for t in tasks)
        findings = check(stack.database, stack.temporal_address)
        assert findings.ok, findings.summary()
        print(f"\nattempts used through a 170 s outage: {sorted(t['attempts'] for t in tasks)}")
