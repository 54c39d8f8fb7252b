"""`GET /api/telemetry/aggregate` (buckets in a time zone) and `GET /api/telemetry/latest`."""
from __future__ import annotations

import time
from datetime import datetime, timezone

from flask_smorest import Blueprint

from visiontrack.errors import ApiError
from visiontrack.web.app import services
from visiontrack.web.responses import json_response
from visiontrack.web.timefmt import format_ts, from_ms, to_ms

from . import buckets
from .aggregate_store import aggregate, latest
from .schemas import AGGS, AggregateArgsSchema, AggregateSchema, LatestArgsSchema, LatestSchema

blp = Blueprint("telemetry_aggregates", __name__, url_prefix="/api/telemetry",
                description="Aggregated and latest telemetry")


@blp.before_request
def _operators_only():
    services().auth.require()


# The latest `to`: a day short of the last instant a datetime holds, so that local times in any zone (UTC+14
# at most) are still datetimes when the buckets are cut (a later `to` in such a zone was a 500).
_LAST_MS = to_ms(datetime(9999, 12, 30, tzinfo=timezone.utc))


def _bad(field: str, message: str) -> ApiError:
    return ApiError("validation_error", "invalid request; see details", [{"field": field, "message": message}])


_DAYS: dict[int, str] = {}
_TIMES: dict[int, str] = {}


def _iso(ms: int) -> str:
    """format_ts for epoch milliseconds, from cached day and time-of-day parts (buckets repeat them)."""
    day, rest = divmod(ms, buckets.DAY)
    date = _DAYS.get(day)
    if date is None:
        if len(_DAYS) > 100_000:
            _DAYS.clear()
        date = _DAYS[day] = format_ts(from_ms(day * buckets.DAY))[:10]
    clock = _TIMES.get(rest)
    if clock is None:
        if len(_TIMES) > 100_000:
            _TIMES.clear()
        seconds, millis = divmod(rest, 1000)
        clock = _TIMES[rest] = f"T{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{millis:03d}Z"
    return date + clock


@blp.route("/aggregate")
@blp.arguments(AggregateArgsSchema(), location="query")
@blp.response(200, AggregateSchema)
def get_aggregate(args):
    """Count, sum, min, max and average per bucket, bucket boundaries in the zone `tz`."""
    svc = services()
    end_ms = to_ms(args["to"]) if args["to"] else int(time.time() * 1000)
    start_ms = to_ms(args["from_"]) if args["from_"] else end_ms - buckets.DAY
    if start_ms >= end_ms:
        raise _bad("to", "must be later than from")
    interval = buckets.INTERVALS[args["interval"]]
    most = svc.config.aggregate_max_buckets
    if (end_ms - start_ms) // interval + 2 > most:
        raise _bad("interval", f"gives more than {most} buckets for this range; use a coarser interval "
                               "or a shorter range")
    aggs = [a for a in AGGS if a in {x.strip() for x in args["agg"].split(",")}]
    if start_ms < 0:  # zone offsets before 1970 are local mean times nobody stores telemetry in
        raise _bad("from", "must be 1970-01-01 or later")
    if end_ms > _LAST_MS:
        raise _bad("to", "must be 9999-12-30T00:00:00Z or earlier")
    p = buckets.plan(buckets.Zone(args["tz"]), interval, start_ms, end_ms)
    with svc.reads.read() as cur:
        rows = aggregate(cur, args["device_id"], args["metric"], p)
    starts = p.starts
    if len(aggs) == len(AGGS):  # the default: a dict literal per bucket, the quickest to build
        items = [{"ts": _iso(starts[i]), "avg": total / count, "min": lo, "max": hi, "sum": total, "count": count}
                 for i, count, total, lo, hi in rows]
    else:
        items = []
        for i, count, total, lo, hi in rows:
            values = dict(zip(AGGS, (total / count, lo, hi, total, count)))
            items.append({"ts": _iso(starts[i]), **{a: values[a] for a in aggs}})
    return json_response({"device_id": args["device_id"], "metric": args["metric"], "interval": args["interval"],
                  "tz": args["tz"], "items": items})


@blp.route("/latest")
@blp.arguments(LatestArgsSchema(), location="query")
@blp.response(200, LatestSchema)
def get_latest(args):
    """The newest reading of each metric of a device (or of one metric)."""
    with services().reads.read() as cur:
        rows = latest(cur, args["device_id"], args["metric"])
    if rows is None:
        raise ApiError("not_found", f"device {args['device_id']} does not exist")
    return json_response({"device_id": args["device_id"],
                          "values": {metric: {"ts": format_ts(ts), "value": value} for metric, ts, value in rows}})
