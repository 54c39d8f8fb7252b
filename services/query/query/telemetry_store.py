"""Raw telemetry reads with keyset pagination.

The sort key is (ts, device_id, metric) minus the columns a filter pins, so that with device and metric
given the query is a plain range scan of the primary key (device_id, metric, ts) in the partitions the
time range selects.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from visiontrack import prepared
from visiontrack.web.pagination import TIMESTAMP_MICROS, KeyKind
from visiontrack.web.timefmt import from_micros, to_micros


COLUMNS = ("device_id", "metric", "ts", "value")
# What a cursor may hold per key column: whatever the column holds, as far as Python and psycopg2 take it
# (times in microseconds a datetime holds, a bigint, text without NUL).
_KEY_KINDS: dict[str, KeyKind] = {"ts": TIMESTAMP_MICROS, "device_id": int, "metric": str}


@dataclass(frozen=True)
class RawQuery:
    device_id: int | None
    metric: str | None
    start: datetime | None
    end: datetime | None
    order: str  # "asc" | "desc"
    limit: int

    @property
    def key_columns(self) -> list[str]:
        cols = ["ts"]
        if self.device_id is None:
            cols.append("device_id")
        if self.metric is None:
            cols.append("metric")
        return cols

    @property
    def cursor_shape(self) -> tuple[KeyKind, ...]:
        return tuple(_KEY_KINDS[c] for c in self.key_columns)

    def cursor_for(self, row: tuple) -> list:
        values = dict(zip(COLUMNS, row))
        return [to_micros(values["ts"]) if c == "ts" else values[c] for c in self.key_columns]


def fetch_raw(cur, q: RawQuery, after: list | None) -> list[tuple]:
    """Rows as tuples in the order of COLUMNS (a plain cursor: a dict per row costs more than the scan)."""
    where, params = [], {"limit": q.limit}
    if q.device_id is not None:
        where.append("device_id = %(device_id)s")
        params["device_id"] = q.device_id
    if q.metric is not None:
        where.append("metric = %(metric)s")
        params["metric"] = q.metric
    if q.start is not None:
        where.append("ts >= %(start)s")
        params["start"] = q.start
    if q.end is not None:
        where.append("ts < %(end)s")
        params["end"] = q.end
    cols = q.key_columns
    if after is not None:
        op = "<" if q.order == "desc" else ">"
        names = [f"after_{i}" for i in range(len(cols))]
        where.append(f"({', '.join(cols)}) {op} ({', '.join(f'%({n})s' for n in names)})")
        for name, col, value in zip(names, cols, after):
            params[name] = from_micros(value) if col == "ts" else value
    direction = "DESC" if q.order == "desc" else "ASC"
    sql = (f"SELECT {', '.join(COLUMNS)} FROM telemetry"
           f"{' WHERE ' + ' AND '.join(where) if where else ''}"
           f" ORDER BY {', '.join(f'{c} {direction}' for c in cols)} LIMIT %(limit)s")
    if q.device_id is not None and q.metric is not None:
        # One series: a range scan of the key whatever the values, so one generic plan serves every call.
        # Other shapes keep a plan made for their values (a time range alone may want another plan).
        prepared.execute(cur, sql, params)
    else:
        cur.execute(sql, params)
    return cur.fetchall()
