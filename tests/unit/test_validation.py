"""The Python writer's telemetry validation, beyond the shared contract vectors."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

from visiontrack.errors import ApiError
from visiontrack.validation import Limits, parse_rfc3339_ms, validate_telemetry

NOW = 1_795_748_400_000  # 2026-11-27T03:00:00Z
LIMITS = Limits()


def run(body, content_type="application/json", reserved=frozenset()):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return validate_telemetry(content_type, raw, NOW, LIMITS, reserved)


@pytest.mark.parametrize("text,expected", [
    ("2026-11-27T03:00:00Z", NOW),
    ("2026-11-27t03:00:00.123456789z", NOW + 123),
    ("2026-11-27T04:30:00+01:30", NOW),
    ("2026-11-26T23:00:00-04:00", NOW),
    ("2024-02-29T00:00:00Z", 1_709_164_800_000),
    ("0001-01-01T00:00:00Z", -62_135_596_800_000),
])
def test_rfc3339_times(text, expected):
    assert parse_rfc3339_ms(text) == expected


@pytest.mark.parametrize("text", ["2026-11-27", "2026-02-29T00:00:00Z", "2026-13-01T00:00:00Z",
                                  "2026-11-27T24:00:00Z", "2026-11-27T23:59:60Z", "2026-11-27 03:00:00Z",
                                  "2026-11-27T03:00:00", "2026-11-27T03:00:00.Z", "2026-11-27T03:00:00+1:00",
                                  "0000-01-01T00:00:00Z", "２026-11-27T03:00:00Z"])
def test_not_rfc3339(text):
    assert parse_rfc3339_ms(text) is None


@given(st.integers(min_value=-62_135_596_800_000, max_value=253_402_300_799_999))
def test_rfc3339_round_trips_any_millisecond(ms):
    from datetime import datetime, timedelta, timezone

    dt = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=ms // 1000)
    text = f"{dt.year:04d}-" + dt.strftime("%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"
    assert parse_rfc3339_ms(text) == ms


def test_both_forms_arrays_and_booleans():
    msgs = run([{"temperature": 21.5, "on": True}, {"ts": NOW - 1000, "values": {"h": 40, "off": False}}])
    assert [m.readings for m in msgs] == [[("temperature", NOW, 21.5), ("on", NOW, 1.0)],
                                          [("h", NOW - 1000, 40.0), ("off", NOW - 1000, 0.0)]]


def test_reserved_device_id_is_not_a_metric():
    (msg,) = run({"device_id": 7, "t": 1}, reserved=frozenset({"device_id"}))
    assert msg.device_id == 7 and msg.readings == [("t", NOW, 1.0)]


def test_every_bad_reading_is_reported_in_order():
    with pytest.raises(ApiError) as err:
        run([{"ok": 1}, 5, {"values": {"a b": 1, "x": None}, "extra": 1}, {"ts": NOW + 301_000, "t": 1}])
    assert err.value.code == "validation_error"
    assert err.value.details == [
        {"index": 1, "field": None, "message": "must be an object"},
        {"index": 2, "field": "values.a b",
         "message": "invalid metric name: must match ^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$"},
        {"index": 2, "field": "values.x", "message": "must be a finite number or a boolean"},
        {"index": 2, "field": "extra", "message": "unknown field"},
        {"index": 3, "field": "ts", "message": "is more than 300 s in the future"},
    ]


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_a_double_is_accepted_exactly_when_within_1e300(x):
    body = json.dumps({"values": {"v": x}}).encode()  # repr round-trips the double
    if abs(x) <= 1e300:
        assert run(body)[0].readings == [("v", NOW, x)]
    else:
        with pytest.raises(ApiError) as err:
            run(body)
        assert err.value.details == [{"index": 0, "field": "values.v",
                                      "message": "must be a finite number between -1e300 and 1e300"}]


def test_integers_are_bounded_as_doubles():
    # Above the double 1e300 as an int, but 1e300 once parsed to a double, as the ingestor compares it.
    just_above = int(1e300) + 1
    assert just_above > 1e300
    assert run(f'{{"a": {just_above}, "b": -{just_above}}}'.encode())[0].readings == [("a", NOW, 1e300),
                                                                                      ("b", NOW, -1e300)]
    with pytest.raises(ApiError) as err:
        run(b'[{"a": 1%s}]' % (b"0" * 301))
    assert err.value.details == [{"index": 0, "field": "a",
                                  "message": "must be a finite number between -1e300 and 1e300"}]
    # Past float() or past int()'s digit limit: refused while parsing, never an OverflowError.
    for digits in (400, 5000):
        with pytest.raises(ApiError) as err:
            run(b'{"a": 1%s}' % (b"0" * digits))
        assert err.value.code == "malformed_json"


@pytest.mark.parametrize("raw,code", [
    (b"[1e400]", "malformed_json"), (b"[NaN]", "malformed_json"), (b'{"a": 1} x', "malformed_json"),
    (b"\xff", "malformed_json"), (b"1" + b"0" * 400, "malformed_json"), (b"[]", "validation_error"),
    (b'"text"', "validation_error"),
])
def test_body_level_errors(raw, code):
    with pytest.raises(ApiError) as err:
        run(raw)
    assert err.value.code == code and err.value.details == []


def test_limits():
    with pytest.raises(ApiError) as err:
        validate_telemetry("application/json", b"x" * (LIMITS.max_body_bytes + 1), NOW, LIMITS)
    assert err.value.code == "payload_too_large"
    with pytest.raises(ApiError) as err:
        run([{"values": {f"m{i}": i for i in range(101)}}] * 100)
    assert err.value.message == "too many readings: 10100 > 10000"
    with pytest.raises(ApiError) as err:
        run({"t": 1}, content_type="text/plain")
    assert err.value.code == "unsupported_media_type"
    assert run({"t": 1}, content_type="Application/JSON; charset=utf-8")
