"""Telemetry validation, byte for byte the rules of docs/contracts.md section 3.

The Rust ingestor implements the same rules; `tests/contract/ingest_vectors.json` holds both to them.
This module is pure: no clock, no I/O (the caller passes `now_ms`).
"""
from __future__ import annotations

import calendar
import json
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import ApiError

METRIC_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$"
_METRIC_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}")
# An integer written in ASCII digits: int() and str.isdigit() also take other scripts' digits ("１２"),
# underscores ("1_000"), a '+' and surrounding blanks, which no client means.
ASCII_INTEGER = re.compile(r"-?[0-9]+", re.ASCII)
# Also the documents' pattern (fields.Timestamp): so [0-9], not \d (other scripts' digits in Python), and the
# fields' ranges spelt out. Only the days of each month and the year's range are left to parse_rfc3339_ms.
RFC3339_RE = re.compile(
    r"((?!0000)[0-9]{4})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9])"
    r"(?:\.([0-9]{1,9}))?(?:([Zz])|([+-])([01][0-9]|2[0-3]):([0-5][0-9]))")

MSG_NOT_OBJECT = "must be an object"
MSG_NO_METRIC = "must hold at least one metric"
MSG_VALUES_NOT_OBJECT = "must be an object of metric names to values"
MSG_UNKNOWN_FIELD = "unknown field"
MSG_BAD_NAME = f"invalid metric name: must match {METRIC_PATTERN}"
MSG_BAD_VALUE = "must be a finite number or a boolean"
MSG_VALUE_RANGE = "must be a finite number between -1e300 and 1e300"
MSG_BAD_TS = "must be an RFC 3339 time or integer epoch milliseconds"
MSG_INVALID = "invalid readings; see details"
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
# Largest accepted magnitude: the rollups sum values in doubles, and ~1.8e8 readings at this bound fit in one
# sum where two of 1e308 overflow it.
MAX_ABS_VALUE = 1e300


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1_048_576
    max_readings: int = 10_000
    max_future_skew_seconds: int = 300
    retention_days: int = 30

    @classmethod
    def from_config(cls, config) -> "Limits":
        return cls(config.max_body_bytes, config.max_readings, config.max_future_skew, config.retention_days)


@dataclass
class Message:
    """One accepted message: its readings and, for writers that reserve it, the device it names."""

    readings: list[tuple[str, int, float]] = field(default_factory=list)
    device_id: Any = None


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (any year, including 0000)."""
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def parse_rfc3339_ms(text: str) -> int | None:
    """Epoch milliseconds of a strict RFC 3339 time (fraction truncated), or None."""
    m = RFC3339_RE.fullmatch(text)
    if not m:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if year < 1 or not 1 <= month <= 12:
        return None
    days_in_month = 29 if month == 2 and calendar.isleap(year) else _DAYS_IN_MONTH[month - 1]
    if not 1 <= day <= days_in_month or hour > 23 or minute > 59 or second > 59:
        return None
    offset_min = 0
    if m.group(9):
        oh, om = int(m.group(10)), int(m.group(11))
        if oh > 23 or om > 59:
            return None
        offset_min = (oh * 60 + om) * (1 if m.group(9) == "+" else -1)
    millis = int((m.group(7) or "0")[:3].ljust(3, "0"))
    seconds = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second - offset_min * 60
    return seconds * 1000 + millis


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("number out of range")
    return value


def _parse_int(text: str) -> int:
    value = int(text)
    float(value)  # OverflowError (a ValueError's sibling) for numbers no double holds
    return value


def _is_reading_value(value: Any) -> bool:
    return isinstance(value, (bool, int, float))


def parse_body(content_type: str | None, body: bytes, limits: Limits) -> Any:
    """Steps 1-3: media type, size, JSON."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise ApiError("unsupported_media_type", "Content-Type must be application/json")
    if len(body) > limits.max_body_bytes:
        raise ApiError("payload_too_large", f"body exceeds {limits.max_body_bytes} bytes")
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant, parse_float=_parse_float,
                          parse_int=_parse_int)
    except (UnicodeDecodeError, ValueError, OverflowError, RecursionError):
        raise ApiError("malformed_json", "body is not valid JSON") from None


def _count_readings(messages: list, reserved: frozenset[str]) -> int:
    count = 0
    for msg in messages:
        if isinstance(msg, dict):
            if "values" in msg:
                values = msg["values"]
                count += len(values) if isinstance(values, dict) else 0
            else:
                count += sum(1 for key in msg if key not in reserved)
    return count


def _check_metric(name: str, value: Any, field_name: str, index: int, details: list) -> float | None:
    """The reading's value as a double, or None after adding its detail."""
    if not _METRIC_RE.fullmatch(name):
        details.append({"index": index, "field": field_name, "message": MSG_BAD_NAME})
        return None
    if not _is_reading_value(value):
        details.append({"index": index, "field": field_name, "message": MSG_BAD_VALUE})
        return None
    # Compare the double, not the int: the ingestor sees only the double. parse_body already refused
    # integers that float() cannot hold.
    number = float(value)
    if not abs(number) <= MAX_ABS_VALUE:
        details.append({"index": index, "field": field_name, "message": MSG_VALUE_RANGE})
        return None
    return number


def _check_ts(raw: Any, index: int, now_ms: int, limits: Limits, details: list) -> int | None:
    if type(raw) is int:  # any size: one beyond 64 bits is simply "in the future"
        ts_ms = raw
    elif isinstance(raw, str):
        ts_ms = parse_rfc3339_ms(raw)
    else:
        ts_ms = None
    if ts_ms is None:
        details.append({"index": index, "field": "ts", "message": MSG_BAD_TS})
        return None
    if ts_ms > now_ms + limits.max_future_skew_seconds * 1000:
        details.append({"index": index, "field": "ts",
                        "message": f"is more than {limits.max_future_skew_seconds} s in the future"})
        return None
    if ts_ms < now_ms - limits.retention_days * 86_400_000:
        details.append({"index": index, "field": "ts",
                        "message": f"is older than the retention of {limits.retention_days} days"})
        return None
    return ts_ms


def _validate_message(msg: Any, index: int, now_ms: int, limits: Limits, reserved: frozenset[str],
                      details: list) -> Message:
    out = Message()
    if not isinstance(msg, dict):
        details.append({"index": index, "field": None, "message": MSG_NOT_OBJECT})
        return out
    structured = "values" in msg
    ts_ms = now_ms
    metrics: list[tuple[str, float]] = []
    for key, value in msg.items():
        if key == "ts":
            ts_ms = _check_ts(value, index, now_ms, limits, details)
        elif key in reserved:
            out.device_id = value
        elif not structured:
            if (number := _check_metric(key, value, key, index, details)) is not None:
                metrics.append((key, number))
        elif key == "values":
            if not isinstance(value, dict):
                details.append({"index": index, "field": "values", "message": MSG_VALUES_NOT_OBJECT})
            elif not value:
                details.append({"index": index, "field": "values", "message": MSG_NO_METRIC})
            else:
                for name, v in value.items():
                    if (number := _check_metric(name, v, f"values.{name}", index, details)) is not None:
                        metrics.append((name, number))
        else:
            details.append({"index": index, "field": key, "message": MSG_UNKNOWN_FIELD})
    if not structured and not any(key != "ts" and key not in reserved for key in msg):
        details.append({"index": index, "field": None, "message": MSG_NO_METRIC})
    if ts_ms is not None:
        out.readings = [(name, ts_ms, v) for name, v in metrics]
    return out


def validate_telemetry(content_type: str | None, body: bytes, now_ms: int, limits: Limits,
                       reserved: frozenset[str] = frozenset()) -> list[Message]:
    """All or nothing: the accepted messages, or an ApiError carrying every problem found."""
    doc = parse_body(content_type, body, limits)
    if isinstance(doc, dict):
        messages = [doc]
    elif isinstance(doc, list):
        if not doc:
            raise ApiError("validation_error", "body holds no readings")
        messages = doc
    else:
        raise ApiError("validation_error", "body must be a JSON object or an array of objects")
    reserved = reserved | {"ts"}
    count = _count_readings(messages, reserved)
    if count > limits.max_readings:
        raise ApiError("validation_error", f"too many readings: {count} > {limits.max_readings}")
    details: list[dict] = []
    accepted = [_validate_message(msg, i, now_ms, limits, reserved - {"ts"}, details)
                for i, msg in enumerate(messages)]
    if details:
        raise ApiError("validation_error", MSG_INVALID, details)
    return accepted
