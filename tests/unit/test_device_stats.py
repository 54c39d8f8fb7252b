"""The Redis layout of the per-device counters and how the registry sums them (visiontrack.device_stats);
the ingestor's side of the same layout is pinned in rust-ingestor/src/device_stats.rs."""
from __future__ import annotations

import pytest

from visiontrack import device_stats

pytestmark = pytest.mark.unit


def test_keys_are_per_device_and_minute():
    assert device_stats.total_key(12) == "vt:device-stats:12:total"
    assert device_stats.minute_key(12, 29_929_140) == "vt:device-stats:12:m:29929140"


def test_the_window_is_this_minute_and_the_59_before():
    now_ms = 29_929_140 * 60_000 + 59_999
    minutes = device_stats.window(now_ms)
    assert len(minutes) == 60 and minutes[-1] == 29_929_140 and minutes[0] == 29_929_081
    assert minutes == sorted(minutes)


def test_counts_sum_hashes_and_split_the_reasons():
    got = device_stats.counts([
        {b"received": b"3", b"accepted": b"1", b"readings": b"4", b"rejected:malformed_json": b"2",
         b"last_accepted_ms": b"1795748400000"},
        {"received": "2", "rejected:unavailable": "1", "rejected:malformed_json": "1", "accepted": "1",
         "readings": "1"},
        {},
    ])
    assert got == {"received": 5, "accepted": 2, "readings": 5,
                   "rejected": {"malformed_json": 3, "unavailable": 1}}
    assert device_stats.counts([]) == {"received": 0, "accepted": 0, "readings": 0, "rejected": {}}


def test_every_live_minute_is_deleted_with_the_device():
    now_ms = 29_929_140 * 60_000
    keys = device_stats.all_keys(7, now_ms)
    assert keys[0] == "vt:device-stats:7:total"
    for minute in device_stats.window(now_ms):
        assert device_stats.minute_key(7, minute) in keys
    assert device_stats.minute_key(7, 29_929_140 - device_stats.MINUTE_TTL_MINUTES) in keys
