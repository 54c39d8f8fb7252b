"""Bucket boundaries in a time zone, and which parts of a window each rollup can answer exactly.

All times are integer epoch milliseconds (UTC). `Zone` gives a zone's offsets and transitions; `plan()`
cuts a window into buckets and into ranges answered by the 1-hour rollup, the 1-minute rollup and raw
rows. What a bucket is across offset changes, and when a rollup row answers exactly: see docs/design.md,
"Aggregates: buckets and rollups".
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

MINUTE = 60_000
HOUR = 3_600_000
DAY = 86_400_000
INTERVALS = {"1m": MINUTE, "5m": 5 * MINUTE, "15m": 15 * MINUTE, "1h": HOUR, "6h": 6 * HOUR, "1d": DAY}
_SCAN = DAY  # offsets are sampled this far apart, and transitions found by bisection in between
_MAX_SHIFT = 3 * HOUR  # more than any offset change


def _floor(t: int, step: int) -> int:
    return t - t % step


def _ceil(t: int, step: int) -> int:
    return t + (-t) % step


class Zone:
    """UTC offsets of an IANA zone, in milliseconds, with the transitions between two instants."""

    def __init__(self, name: str):
        self.name = name
        self.fixed = name in ("UTC", "Etc/UTC", "Etc/GMT", "GMT")
        self.tz = timezone.utc if self.fixed else ZoneInfo(name)

    def offset(self, t: int) -> int:
        if self.fixed:
            return 0
        dt = datetime.fromtimestamp(t // 1000, tz=self.tz)
        return int(dt.utcoffset().total_seconds() * 1000)

    def segments(self, start: int, end: int) -> list[tuple[int, int, int]]:
        """[(from, to, offset)] covering [start, end) with one offset each (transitions at whole seconds)."""
        if self.fixed:
            return [(start, end, 0)]
        out = []
        seg_start, seg_off = start, self.offset(start)
        probe = start
        while probe < end:
            nxt = min(probe + _SCAN, end)
            off = self.offset(nxt - 1)
            if off != seg_off:
                # offset(lo) == seg_off and offset(hi) != seg_off, in whole seconds
                lo = (probe if probe == seg_start else probe - 1) // 1000
                hi = (nxt - 1) // 1000
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if self.offset(mid * 1000) == seg_off:
                        lo = mid
                    else:
                        hi = mid
                cut = hi * 1000
                out.append((seg_start, cut, seg_off))
                seg_start, seg_off = cut, self.offset(cut)
                probe = cut
                continue
            probe = nxt
        out.append((seg_start, end, seg_off))
        return out


def label(interval: int, t: int, offset: int) -> tuple:
    local = t + offset
    if interval <= HOUR:
        return local // interval, offset
    return (local // interval,)


def boundaries(zone: Zone, interval: int, start: int, end: int) -> tuple[list[int], list[int], list[int]]:
    """Every bucket start in [start, end), sorted (where the label changes), and those of them that are not
    on a whole UTC minute, and not on a whole UTC hour."""
    out: list[int] = []
    off_minute: list[int] = []
    off_hour: list[int] = []
    segments = zone.segments(start, end)
    prev_off: int | None = None
    for seg_start, seg_end, off in segments:
        continues = prev_off is not None and label(interval, seg_start - 1, prev_off) == label(interval, seg_start, off)
        if prev_off is not None and not continues:
            out.append(seg_start)
            if seg_start % MINUTE:
                off_minute.append(seg_start)
            if seg_start % HOUR:
                off_hour.append(seg_start)
        first = seg_start + (-(seg_start + off)) % interval
        if first == seg_start and continues:  # clocks fell back to a boundary (local midnight): same bucket
            first += interval
        grid = range(first, seg_end, interval)
        out.extend(grid)
        # Grid points of one segment share their remainder: all on whole minutes (hours) or none.
        if grid and grid[0] % MINUTE:
            off_minute.extend(grid)
        if grid and grid[0] % HOUR and interval >= HOUR:  # shorter intervals never use whole hours
            off_hour.extend(grid)
        prev_off = off
    if len(segments) > 1:
        out, off_minute, off_hour = sorted(set(out)), sorted(set(off_minute)), sorted(set(off_hour))
    return out, off_minute, off_hour


def bucket_starts(zone: Zone, interval: int, frm: int, to: int) -> list[int]:
    """The start of the bucket holding `frm`, then every later bucket start before `to`."""
    return _starts(zone, interval, frm, to)[0]


def _starts(zone: Zone, interval: int, frm: int, to: int) -> tuple[list[int], list[int], list[int]]:
    found, off_minute, off_hour = boundaries(zone, interval, frm - interval - _MAX_SHIFT, to)
    i = bisect.bisect_right(found, frm) - 1
    return found[max(i, 0):], off_minute, off_hour


@dataclass(frozen=True)
class Plan:
    starts: list[int]  # bucket starts; a bucket runs to the next start (the last one to `to` at most)
    ranges: dict[str, list[tuple[int, int]]]  # "1h" | "1m" | "raw" -> [(from, to)], merged and sorted


def plan(zone: Zone, interval: int, frm: int, to: int) -> Plan:
    starts, off_minute, off_hour = _starts(zone, interval, frm, to)
    pieces: list[tuple[str, int, int]] = []
    m_lo, m_hi = _ceil(frm, MINUTE), _floor(to, MINUTE)
    if m_lo >= m_hi:
        pieces.append(("raw", frm, to))
    else:
        pieces.append(("raw", frm, m_lo))
        # Minutes (hours) a bucket start cuts through: rare for minutes (an offset with seconds), the rule
        # for hours in half-hour zones; with sub-hour intervals no hour is whole in one bucket anyway.
        cut_minutes = sorted({_floor(b, MINUTE) for b in off_minute if frm < b < to})
        cut_hours = sorted({_floor(b, HOUR) for b in off_hour if frm < b < to}) if interval >= HOUR else []

        def minutes(lo: int, hi: int) -> None:
            i = bisect.bisect_left(cut_minutes, lo)
            while i < len(cut_minutes) and cut_minutes[i] < hi:
                m = cut_minutes[i]
                pieces.append(("1m", lo, m))
                pieces.append(("raw", m, m + MINUTE))
                lo = m + MINUTE
                i += 1
            pieces.append(("1m", lo, hi))

        h_lo, h_hi = _ceil(m_lo, HOUR), _floor(m_hi, HOUR)
        if interval >= HOUR and h_lo < h_hi:
            minutes(m_lo, h_lo)
            lo = h_lo
            for h in cut_hours[bisect.bisect_left(cut_hours, h_lo):bisect.bisect_left(cut_hours, h_hi)]:
                pieces.append(("1h", lo, h))
                minutes(h, h + HOUR)
                lo = h + HOUR
            pieces.append(("1h", lo, h_hi))
            minutes(h_hi, m_hi)
        else:
            minutes(m_lo, m_hi)
        pieces.append(("raw", m_hi, to))
    ranges: dict[str, list[tuple[int, int]]] = {"1h": [], "1m": [], "raw": []}
    last: tuple[str, int, int] | None = None
    for kind, lo, hi in pieces:
        if lo >= hi:
            continue
        if last is not None and last[0] == kind and last[2] == lo:
            last = (kind, last[1], hi)
            ranges[kind][-1] = (last[1], hi)
            continue
        ranges[kind].append((lo, hi))
        last = (kind, lo, hi)
    return Plan(starts, ranges)
