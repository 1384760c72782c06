"""The worker's cap on provider calls per second per integration (integrations/shared/activities.Throttle)."""

from __future__ import annotations

import threading
import time

from integrations.shared.activities import Throttle, ThrottledSession, job_activities
from integrations.shared.providers import JobApi


def test_calls_beyond_the_rate_wait_for_their_turn():
    """60 calls from 6 threads at 20 per second: a burst of one second's worth, then 20 a second. Without the
    throttle all 60 would land in the same second."""
    throttle, seen, lock = Throttle(20), [], threading.Lock()

    def caller():
        for _ in range(10):
            throttle.wait()
            with lock:
                seen.append(time.monotonic())

    threads = [threading.Thread(target=caller) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    seen.sort()
    assert len(seen) == 60
    busiest = max(sum(1 for t in seen if start <= t < start + 1) for start in seen)
    assert busiest <= 20 + 20 + 1  # the burst plus one second's rate (and one for the clock's edges)
    assert seen[-1] - seen[0] >= (60 - 20) / 20 * 0.9


def test_every_provider_call_of_an_activity_goes_through_its_integrations_throttle(monkeypatch):
    """The activities' client gets a ThrottledSession holding the integration's one Throttle."""
    made = []

    class Recorder(JobApi):
        def __init__(self, base_url, api_key, session=None):
            super().__init__(base_url, api_key, session)
            made.append(self.session)

        def cancel(self, external_id):
            return False

    import integrations.shared.activities as activities

    monkeypatch.setattr(activities, "provider_settings",
                        lambda namespace: {"baseUrl": "http://127.0.0.1:9", "apiKey": "k", "model": "m",
                                           "callsPerSecond": 7})
    activities.throttle.cache_clear()
    try:
        cancel = job_activities("throttleTest", Recorder).cancel
        assert cancel(activities.PollInput("t", 1, "job")) is False
        assert cancel(activities.PollInput("t", 1, "job")) is False
    finally:
        activities.throttle.cache_clear()
    assert all(isinstance(s, ThrottledSession) for s in made) and len(made) == 2
    assert made[0].throttle is made[1].throttle and made[0].throttle.rate == 7
