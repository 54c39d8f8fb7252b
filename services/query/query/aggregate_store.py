"""Aggregates over buckets, answered from the rollups where they fit exactly and from raw rows elsewhere.

One statement: the 1-hour rollup rows, the 1-minute rollup rows and the raw rows of the ranges `buckets.plan`
chose (each an index range scan on (device_id, metric, time) in the partitions it touches), put in their
buckets with `width_bucket` over the bucket starts, and summed per bucket. The statement's time bounds are
also given as constants, so the planner skips partitions outside the window.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from visiontrack.web.timefmt import EPOCH

from .buckets import Plan

_SOURCES = {
    "1h": ("telemetry_1h", "bucket", "x.count, x.sum, x.min, x.max"),
    "1m": ("telemetry_1m", "bucket", "x.count, x.sum, x.min, x.max"),
    "raw": ("telemetry", "ts", "1::bigint, x.value, x.value, x.value"),
}


def _dt(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def aggregate(cur, device_id: int, metric: str, p: Plan) -> list[dict]:
    """Rows {i: index into p.starts, n: count, s: sum, lo: min, hi: max} for the buckets holding data."""
    parts, params = [], {"d": device_id, "m": metric, "starts": [_dt(s) for s in p.starts]}
    for kind, ranges in p.ranges.items():
        if not ranges:
            continue
        table, col, values = _SOURCES[kind]
        params[f"{kind}_lo"] = [_dt(lo) for lo, _ in ranges]
        params[f"{kind}_hi"] = [_dt(hi) for _, hi in ranges]
        params[f"{kind}_min"] = _dt(ranges[0][0])
        params[f"{kind}_max"] = _dt(ranges[-1][1])
        parts.append(f"""
            SELECT x.{col} AS ts, {values}
            FROM unnest(%({kind}_lo)s::timestamptz[], %({kind}_hi)s::timestamptz[]) AS r(lo, hi)
            JOIN {table} x ON x.device_id = %(d)s AND x.metric = %(m)s
                          AND x.{col} >= r.lo AND x.{col} < r.hi
                          AND x.{col} >= %({kind}_min)s AND x.{col} < %({kind}_max)s""")
    sql = f"""SELECT width_bucket(p.ts, %(starts)s::timestamptz[]) - 1 AS i, sum(p.n)::bigint AS n,
                     sum(p.s) AS s, min(p.lo) AS lo, max(p.hi) AS hi
              FROM ({' UNION ALL '.join(parts)}) AS p(ts, n, s, lo, hi)
              GROUP BY 1 ORDER BY 1"""
    cur.execute(sql, params)
    return cur.fetchall()
