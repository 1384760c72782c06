"""The invariant checker's own rules (dev/invariants.py), on runs as Temporal describes them."""

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from dev.invariants import overlapping

AT = datetime(2026, 11, 29, 10, 49, 47, 421224, tzinfo=UTC)


def run(run_id: str, start: timedelta, close: timedelta | None) -> SimpleNamespace:
    return SimpleNamespace(run_id=run_id, start_time=AT + start,
                           close_time=None if close is None else AT + close)


def test_a_start_stamped_just_before_the_close_it_waited_for_is_no_overlap():
    """As a CI run's chaos test recorded them: attempt 4's run was stamped 44 us before attempt 3's close, which
    Temporal had made final before it let the start through (one open run per workflow id)."""
    earlier = run("de9d", timedelta(0), timedelta(seconds=1, microseconds=253672))
    later = run("e382", timedelta(seconds=1, microseconds=253628), timedelta(seconds=3))
    assert overlapping([earlier, later]) == []


def test_runs_that_truly_overlap_or_stay_open_are_found():
    earlier = run("a", timedelta(0), timedelta(seconds=2))
    later = run("b", timedelta(seconds=1), timedelta(seconds=3))
    assert overlapping([earlier, later]) == [(earlier, later)]
    still_open = run("c", timedelta(0), None)
    assert overlapping([still_open, later]) == [(still_open, later)]
    back_to_back = [run("d", timedelta(0), timedelta(seconds=1)), run("e", timedelta(seconds=1), timedelta(seconds=2))]
    assert overlapping(back_to_back) == []
