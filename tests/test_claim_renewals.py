"""ClaimRenewals' schedule (claim_renewals.py): which held claims are due, and how often it looks.

Pure arithmetic on given clocks; the renewals against a real web process are in test_processor.py."""

import pytest

from claim_renewals import MAX_TICK_SECONDS, MIN_TICK_SECONDS, ClaimRenewals

VIDEO = "fangzhouVideoGeneration"
CLAIM = ("task-1", 1)


def renewals(timeout=30, at=100.0):
    claims = ClaimRenewals(session=None, log=None, http_timeout=(1, 1), max_items=100, confirm=None)
    claims.hold(VIDEO, [CLAIM], at, timeout)
    return claims


def test_a_claim_is_due_a_third_of_its_window_after_the_claim():
    claims = renewals(timeout=31)  # window 30 s (startedAt is whole seconds): due every 10 s
    assert claims.due(VIDEO, 109.9) == [] and claims.due(VIDEO, 110.0) == [CLAIM]


def test_only_while_its_start_loop_touches_it():
    claims = renewals(timeout=31)
    assert claims.due(VIDEO, 110.0) == [CLAIM]
    assert claims.due(VIDEO, 131.0) == []  # not touched for 31 s: a wedged start loop renews nothing
    claims.touch(VIDEO, *CLAIM, now=125.0)
    assert claims.due(VIDEO, 150.0) == [CLAIM]


def test_for_at_most_twelve_stuck_timeouts():
    claims = renewals(timeout=10)
    claims.touch(VIDEO, *CLAIM, now=219.0)
    assert claims.due(VIDEO, 219.9) == [CLAIM]
    claims.touch(VIDEO, *CLAIM, now=220.0)
    assert claims.due(VIDEO, 220.0) == []  # held 120 s: other processors may rescue it


@pytest.mark.parametrize("timeout", [None, 0, -5, True, "300", float("nan"), 1])
def test_an_answer_without_a_usable_timeout_renews_nothing(timeout):
    """(A 1 s timeout leaves no window: startedAt is whole seconds.)"""
    assert renewals(timeout=timeout).due(VIDEO, 110.0) == []


def test_an_answer_from_a_web_process_without_renewals_stops_them():
    claims = renewals(timeout=31)
    claims.hold(VIDEO, [("task-2", 1)], 105.0, None)  # a rolling deploy: an older web process answered
    assert claims.due(VIDEO, 120.0) == []
    claims.hold(VIDEO, [("task-3", 1)], 106.0, 31)
    assert claims.due(VIDEO, 120.0) == [CLAIM, ("task-2", 1), ("task-3", 1)]


def test_a_released_claim_is_not_renewed():
    claims = renewals()
    claims.release(VIDEO, *CLAIM)
    assert claims.due(VIDEO, 120.0) == [] and claims.count() == 0


@pytest.mark.parametrize("timeout, tick", [(None, MAX_TICK_SECONDS), (300, MAX_TICK_SECONDS), (3, 1 / 3),
                                           (1, MIN_TICK_SECONDS)])
def test_it_looks_twice_per_renewal_interval(timeout, tick):
    assert renewals(timeout=timeout).tick() == pytest.approx(tick)


def test_confirmations_taken_by_two_threads_are_each_taken_once():
    """The renewer and a poll thread take from one integration's confirmations at once: no item may be lost
    (a check-then-pop lost the one it had popped, and raised, when the other thread took the last)."""
    import sys
    import threading
    import time

    from integrations import load_integrations
    from processor import ProcessorSettings, TaskProcessor
    from settings import load_config
    from tests.conftest import TOKEN

    config = load_config(overrides={"INTERNAL_API_TOKEN": TOKEN})
    processor = TaskProcessor(ProcessorSettings("test", TOKEN, {}), bridge=object())
    pull = load_integrations(config)[0].get_pull_mode_config()
    queue, done, errors = processor.confirmations[pull.integration], threading.Event(), []
    taken: list[list[dict]] = [[], []]

    def take(into):
        try:
            while not done.is_set() or queue:
                into.extend(processor.take_confirmations(pull, limit=2))
        except Exception as exc:  # what the race raised
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    threads = [threading.Thread(target=take, args=(into,)) for into in taken]
    try:
        for thread in threads:
            thread.start()
        sent, until = 0, time.monotonic() + 2
        while time.monotonic() < until and not errors:
            queue.extend((f"task-{n}", 1) for n in range(sent, sent + 3))  # a few at a time: often the last
            sent += 3
    finally:
        done.set()
        for thread in threads:
            thread.join(60)
        sys.setswitchinterval(interval)
    assert not errors
    assert sorted(int(i["apiCallId"][5:]) for i in taken[0] + taken[1]) == list(range(sent))
