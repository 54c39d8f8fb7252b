"""Aggregates over buckets and the latest values, from the rollups and the telemetry_latest table.

Aggregates are answered from the rollups where they fit exactly and from raw rows elsewhere.

One statement: the 1-hour rollup rows, the 1-minute rollup rows and the raw rows of the ranges `buckets.plan`
chose (each an index range scan on (device_id, metric, time) in the partitions it touches, with constant
bounds so the planner skips the other partitions), put in their buckets (arithmetic when the buckets are
evenly spaced, `width_bucket` over the bucket starts when an offset change makes them uneven), and summed
per bucket.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from visiontrack import prepared
from visiontrack.web.timefmt import EPOCH

from .buckets import Plan

_SOURCES = {
    "1h": ("telemetry_1h", "bucket", "x.count, x.sum, x.min, x.max"),
    "1m": ("telemetry_1m", "bucket", "x.count, x.sum, x.min, x.max"),
    "raw": ("telemetry", "ts", "1::bigint, x.value, x.value, x.value"),
}


_MS = "timestamptz 'epoch'"


def _dt(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def _bigints(values) -> str:
    """An array literal: one string to parse instead of an ARRAY[...] of many expressions."""
    return "{" + ",".join(map(str, values)) + "}"


_FEW = 16  # up to this many ranges of a kind: one branch each, with constant bounds the planner prunes by


def aggregate(cur, device_id: int, metric: str, p: Plan) -> list[tuple[int, int, float, float, float]]:
    """Rows (index into p.starts, count, sum, min, max) for the buckets holding data, in order. `cur` is a
    plain (tuple) cursor."""
    parts, params = [], {"d": device_id, "m": metric}
    for kind, ranges in p.ranges.items():
        if not ranges:
            continue
        table, col, values = _SOURCES[kind]
        head = f"SELECT x.{col} AS ts, {values} FROM {table} x WHERE x.device_id = %(d)s AND x.metric = %(m)s"
        if len(ranges) <= _FEW:
            for j, (lo, hi) in enumerate(ranges):
                params[f"{kind}_{j}_lo"], params[f"{kind}_{j}_hi"] = _dt(lo), _dt(hi)
                parts.append(f"{head} AND x.{col} >= %({kind}_{j}_lo)s AND x.{col} < %({kind}_{j}_hi)s")
            continue
        params[f"{kind}_lo"] = _bigints(lo for lo, _ in ranges)
        params[f"{kind}_hi"] = _bigints(hi for _, hi in ranges)
        params[f"{kind}_min"] = _dt(ranges[0][0])
        params[f"{kind}_max"] = _dt(ranges[-1][1])
        parts.append(f"""
            SELECT x.{col} AS ts, {values}
            FROM unnest(%({kind}_lo)s::bigint[], %({kind}_hi)s::bigint[]) AS r(lo, hi)
            JOIN {table} x ON x.device_id = %(d)s AND x.metric = %(m)s
                          AND x.{col} >= {_MS} + r.lo * interval '1 millisecond'
                          AND x.{col} < {_MS} + r.hi * interval '1 millisecond'
                          AND x.{col} >= %({kind}_min)s AND x.{col} < %({kind}_max)s""")
    ms = "round(date_part('epoch', p.ts) * 1000)::bigint"  # float8: cheaper than extract's numeric
    step = _grid_step(p.starts)
    if step:  # evenly spaced buckets (no offset change in the window): arithmetic instead of a search
        params["first"], params["step"] = p.starts[0], step
        index = f"({ms} - %(first)s) / %(step)s"
    else:
        params["starts"] = _bigints(p.starts)
        index = f"width_bucket({ms}, %(starts)s::bigint[]) - 1"
    # sum() of int4 adds in an int8; of int8 it adds in numeric, the slowest part of the grouping. A source row
    # holds at most one series' readings of an hour (at most 3.6 million, one per millisecond): int4 is safe.
    sql = f"""SELECT {index} AS i, sum(p.n::int4) AS n, sum(p.s) AS s, min(p.lo) AS lo, max(p.hi) AS hi
              FROM ({' UNION ALL '.join(parts)}) AS p(ts, n, s, lo, hi)
              GROUP BY 1 ORDER BY 1"""
    prepared.execute(cur, sql, params)
    return cur.fetchall()


def _grid_step(starts: list[int]) -> int | None:
    if len(starts) < 2:
        return None
    step = starts[1] - starts[0]
    last = starts[0]
    for s in starts[1:]:
        if s - last != step:
            return None
        last = s
    return step


_LATEST = "SELECT metric, ts, value FROM telemetry_latest WHERE device_id = %(d)s "


def latest(cur, device_id: int, metric: str | None) -> list[tuple] | None:
    """(metric, ts, value) of the device's newest reading of each metric (or of `metric`); None when there is no
    such device."""
    # Two texts, each with its own generic plan: one index probe for a metric, a range for all of them.
    prepared.execute(cur, _LATEST + ("AND metric = %(m)s" if metric is not None else "ORDER BY metric"),
                     {"d": device_id, "m": metric})
    rows = cur.fetchall()
    if not rows:
        cur.execute("SELECT 1 FROM devices WHERE id = %s", (device_id,))
        if cur.fetchone() is None:
            return None
    return rows
