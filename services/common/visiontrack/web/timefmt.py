"""Times in and out of the HTTP API: RFC 3339 UTC with milliseconds out; RFC 3339 or epoch ms in."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from ..validation import ASCII_INTEGER, parse_rfc3339_ms

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


_UTC_OFFSET = timedelta(0)


def format_ts(dt: datetime) -> str:
    """`2026-01-02T03:04:05.678Z`: UTC, milliseconds truncated. isoformat is C and several times faster
    than strftime, which matters at thousands of readings per response."""
    if dt.tzinfo is None or dt.utcoffset() != _UTC_OFFSET:
        dt = dt.astimezone(timezone.utc)
    return dt.isoformat(timespec="milliseconds")[:23] + "Z"


def parse_time(raw: str) -> datetime:
    """A query-string time: RFC 3339 or integer epoch milliseconds in ASCII digits (ValueError otherwise)."""
    if ASCII_INTEGER.fullmatch(raw):  # not str.isdigit(): "１２" was 12 ms
        ms = int(raw)
    else:
        ms = parse_rfc3339_ms(raw)
        if ms is None:
            raise ValueError("must be an RFC 3339 time or integer epoch milliseconds")
    return from_ms(ms)


def from_ms(ms: int) -> datetime:
    try:
        return EPOCH + timedelta(milliseconds=ms)
    except OverflowError:
        raise ValueError("is out of range") from None


def to_micros(ts: datetime) -> int:
    """Exact microseconds since the epoch (no float on the way)."""
    delta = ts - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def to_ms(ts: datetime) -> int:
    return to_micros(ts) // 1000
