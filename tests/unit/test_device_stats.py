"""The Redis layout of the per-device counters and how the registry sums them (visiontrack.device_stats);
the ingestor's side of the same layout is pinned in rust-ingestor/src/device_stats.rs."""
from __future__ import annotations

import pytest

from visiontrack import device_stats

pytestmark = pytest.mark.unit


def test_keys_are_per_device_and_bucket():
    assert device_stats.total_key(12) == "vt:device-stats:12:total"
    assert device_stats.bucket_key(12, 5_985_828) == "vt:device-stats:12:b:5985828"


def test_the_window_is_this_bucket_and_the_11_before():
    now_ms = 5_985_828 * 300_000 + 299_999
    buckets = device_stats.window(now_ms)
    assert buckets == list(range(5_985_817, 5_985_829))


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


def test_every_live_bucket_is_deleted_with_the_device():
    now_ms = 5_985_828 * 300_000 + 1
    keys = device_stats.all_keys(7, now_ms)
    assert keys[0] == "vt:device-stats:7:total"
    for bucket in device_stats.window(now_ms):
        assert device_stats.bucket_key(7, bucket) in keys
    # A bucket last written just before it ended lives 65 minutes past that: still there now.
    oldest_alive = (now_ms - device_stats.BUCKET_TTL_MS) // device_stats.BUCKET_MS
    assert device_stats.bucket_key(7, oldest_alive) in keys
