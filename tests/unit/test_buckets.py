"""Bucket boundaries in IANA zones (DST, half-hour offsets) and the plan of which rollup answers what."""
from __future__ import annotations

import bisect
import sys
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from query import buckets as B
from visiontrack.validation import MAX_ABS_VALUE

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu", "Australia/Lord_Howe",
         "America/Santiago", "Pacific/Chatham", "America/St_Johns", "Asia/Tehran",
         "America/Havana", "Atlantic/Azores"]  # these two fall back to local midnight itself
START = int(datetime.fromisoformat("2026-01-01T00:00:00+00:00").timestamp() * 1000)


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def _label(zone: B.Zone, interval: int, t: int) -> tuple:
    return B.label(interval, t, zone.offset(t))


@settings(max_examples=300, deadline=None)
@given(zone=st.sampled_from(ZONES), interval=st.sampled_from(list(B.INTERVALS.values())),
       frm=st.integers(START, START + 365 * B.DAY), length=st.integers(1, 3 * B.DAY),
       probes=st.lists(st.integers(0, 10**9), min_size=1, max_size=20))
def test_every_instant_lies_in_the_bucket_of_its_label(zone, interval, frm, length, probes):
    z = B.Zone(zone)
    to = frm + length
    starts = B.bucket_starts(z, interval, frm, to)
    assert starts[0] <= frm and starts == sorted(set(starts)) and all(s < to for s in starts)
    for s in starts:  # a start is where the label changes
        assert _label(z, interval, s - 1) != _label(z, interval, s)
    for p in probes:
        t = frm + p % length
        i = bisect.bisect_right(starts, t) - 1
        assert _label(z, interval, t) == _label(z, interval, starts[i])
        if i + 1 < len(starts):
            assert _label(z, interval, starts[i + 1] - 1) == _label(z, interval, t)


@settings(max_examples=300, deadline=None)
@given(zone=st.sampled_from(ZONES), interval=st.sampled_from(list(B.INTERVALS.values())),
       frm=st.integers(START, START + 365 * B.DAY), length=st.integers(1, 3 * B.DAY))
def test_the_plan_covers_the_window_once_with_rollup_rows_inside_one_bucket(zone, interval, frm, length):
    z = B.Zone(zone)
    to = frm + length
    p = B.plan(z, interval, frm, to)
    pieces = sorted((lo, hi, kind) for kind, ranges in p.ranges.items() for lo, hi in ranges)
    assert pieces[0][0] == frm and pieces[-1][1] == to
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))
    for lo, hi, kind in pieces:
        if kind == "raw":
            continue
        step = B.MINUTE if kind == "1m" else B.HOUR
        assert lo % step == 0 and hi % step == 0
        inner = p.starts[bisect.bisect_right(p.starts, lo):bisect.bisect_left(p.starts, hi)]
        assert all(s % step == 0 for s in inner), (kind, lo, hi)  # no start cuts through a rollup row


def test_a_day_follows_local_midnight_across_dst():
    z = B.Zone("Europe/Berlin")
    starts = B.bucket_starts(z, B.DAY, _ms("2026-10-24T12:00:00+00:00"), _ms("2026-10-27T00:00:00+00:00"))
    assert starts == [_ms("2026-10-23T22:00:00+00:00"), _ms("2026-10-24T22:00:00+00:00"),
                      _ms("2026-10-25T23:00:00+00:00"), _ms("2026-10-26T23:00:00+00:00")]
    spring = B.bucket_starts(B.Zone("America/New_York"), B.DAY, _ms("2026-03-08T06:00:00+00:00"),
                             _ms("2026-03-09T12:00:00+00:00"))
    assert [b - a for a, b in zip(spring, spring[1:])] == [23 * B.HOUR]


def test_the_two_one_oclock_hours_of_a_fall_back_night_are_two_buckets():
    starts = B.bucket_starts(B.Zone("America/New_York"), B.HOUR, _ms("2026-11-01T04:00:00+00:00"),
                             _ms("2026-11-01T08:00:00+00:00"))
    assert [b - a for a, b in zip(starts, starts[1:])] == [B.HOUR] * 3  # 00:00, 01:00 EDT, 01:00 EST, 02:00


def test_half_hour_zones_use_minutes_not_hours_for_hourly_buckets():
    p = B.plan(B.Zone("Asia/Kolkata"), B.HOUR, _ms("2026-11-01T00:00:00+00:00"), _ms("2026-11-02T00:00:00+00:00"))
    assert p.ranges["1h"] == [] and p.starts[1] % B.HOUR == 30 * B.MINUTE
    q = B.plan(B.Zone("UTC"), B.DAY, _ms("2026-11-01T00:00:30+00:00"), _ms("2026-11-30T00:00:00+00:00"))
    assert q.ranges == {"1h": [(_ms("2026-11-01T01:00:00+00:00"), _ms("2026-11-30T00:00:00+00:00"))],
                        "1m": [(_ms("2026-11-01T00:01:00+00:00"), _ms("2026-11-01T01:00:00+00:00"))],
                        "raw": [(_ms("2026-11-01T00:00:30+00:00"), _ms("2026-11-01T00:01:00+00:00"))]}


def test_a_day_without_a_midnight_starts_at_the_transition():
    # America/Santiago moves 2026-09-06 00:00 (-04) to 01:00 (-03): that day starts at the jump.
    starts = B.bucket_starts(B.Zone("America/Santiago"), B.DAY, _ms("2026-09-05T12:00:00+00:00"),
                             _ms("2026-09-07T12:00:00+00:00"))
    assert starts == [_ms("2026-09-05T04:00:00+00:00"), _ms("2026-09-06T04:00:00+00:00"),
                      _ms("2026-09-07T03:00:00+00:00")]


@pytest.mark.parametrize("zone,transition", [("America/Havana", "2026-11-01T05:00:00+00:00"),
                                             ("Atlantic/Azores", "2026-10-25T01:00:00+00:00")])
def test_a_fall_back_to_local_midnight_keeps_the_day_whole(zone, transition):
    # Clocks go from 01:00 back to 00:00: the instant after the change is local midnight again, yet the same
    # day (and 6-hour block) as the hour before it. It used to start a bucket of its own.
    cut = _ms(transition)
    for interval in (B.DAY, 6 * B.HOUR):
        starts = B.bucket_starts(B.Zone(zone), interval, cut - 2 * B.DAY, cut + 2 * B.DAY)
        assert cut not in starts, interval


def test_no_bucket_holds_readings_enough_for_its_sum_to_overflow():
    """Raw readings are unique per device, metric and millisecond, and bounded to 1e300: the longest bucket
    (a day, 25 hours when clocks go back) holds at most 9e7 of them, and their sum stays a finite double. A
    longer interval or a looser bound needs saturating sums: Postgres refuses a float8 sum that overflows, and
    the aggregator's batch with it."""
    most_readings = max(B.INTERVALS.values()) + B.HOUR  # one a millisecond
    assert most_readings * MAX_ABS_VALUE < sys.float_info.max
