"""Cursors and times of the HTTP API."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from visiontrack.errors import ApiError
from visiontrack.web.pagination import decode_cursor, encode_cursor
from visiontrack.web.timefmt import format_ts, from_ms, parse_time


def test_cursor_round_trip_and_shape_check():
    raw = encode_cursor([1_795_748_400_123_000, 5, "temperature"])
    assert "=" not in raw
    assert decode_cursor(raw, (int, int, str)) == [1_795_748_400_123_000, 5, "temperature"]
    for bad in ("", "!!!", encode_cursor([1, 2]), encode_cursor(["x", 2, "t"]), encode_cursor([True, 1, "t"])):
        with pytest.raises(ApiError) as err:
            decode_cursor(bad, (int, int, str))
        assert err.value.details[0]["field"] == "cursor"


def test_times_out_are_utc_with_milliseconds():
    assert format_ts(datetime(2026, 11, 27, 3, 0, 0, 123456, tzinfo=timezone.utc)) == "2026-11-27T03:00:00.123Z"
    assert format_ts(from_ms(1_795_748_400_007)) == "2026-11-27T03:00:00.007Z"


def test_times_in_are_rfc3339_or_epoch_ms():
    assert parse_time("1795748400123") == from_ms(1_795_748_400_123)
    assert parse_time("2026-11-27T04:00:00+01:00") == from_ms(1_795_748_400_000)
    with pytest.raises(ValueError):
        parse_time("yesterday")


def test_microsecond_conversions_are_exact():
    from visiontrack.web.timefmt import from_micros, to_micros, to_ms

    for us in (0, 1, 1_795_748_400_123_456, -62_135_596_800_000_000):
        assert to_micros(from_micros(us)) == us
    assert to_ms(from_micros(1_795_748_400_123_999)) == 1_795_748_400_123
