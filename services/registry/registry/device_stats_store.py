"""A device's accounting (GET /api/devices/{id}/stats): what the ingestor counted (Redis, flushed about once
a second by each of its server threads) and what the aggregator stored (Postgres `device_stats`, counted in
the transaction of the batch), both in 5-minute buckets, the last hour being the last twelve. See
docs/design.md, "Per-device accounting"."""
from __future__ import annotations

import time
from datetime import datetime, timezone

import redis

from visiontrack import device_stats
from visiontrack.errors import ApiError

from .device_store import _not_found

_STORED = """SELECT coalesce(sum(stored), 0) AS total,
                    coalesce(sum(stored) FILTER (WHERE bucket >= %(since)s), 0) AS last_hour
             FROM device_stats WHERE device_id = %(d)s"""


def _at(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, timezone.utc)


def _ms(value) -> int | None:
    return None if value is None else int(value)


class DeviceStatsStore:
    def __init__(self, db, redis_client):
        self.db = db
        self.redis = redis_client

    def get(self, device_id: int) -> dict:
        now_ms = int(time.time() * 1000)
        buckets = device_stats.window(now_ms)
        since = _at(buckets[0] * device_stats.BUCKET_MS)
        with self.db.transaction() as cur:
            cur.execute("SELECT created_at FROM devices WHERE id = %s", (device_id,))
            device = cur.fetchone()
            if device is None:
                raise _not_found(device_id)
            cur.execute(_STORED, {"since": since, "d": device_id})
            stored = cur.fetchone()
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hgetall(device_stats.total_key(device_id))
            for bucket in buckets:
                pipe.hgetall(device_stats.bucket_key(device_id, bucket))
            total, *recent = pipe.execute()
        except redis.RedisError:
            raise ApiError("unavailable", "the device counters (Redis) are unreachable; retry later",
                           retry_after=2) from None
        total = {(k.decode() if isinstance(k, bytes) else k): v for k, v in total.items()}
        return {
            "device_id": device_id,
            "as_of": _at(now_ms),
            "last_hour": _period(since, device_stats.counts(recent), stored["last_hour"]),
            "since_registration": _period(device["created_at"], device_stats.counts([total]), stored["total"]),
            "last_accepted_at": _at(_ms(total.get("last_accepted_ms"))),
            "newest_reading_ts": _at(_ms(total.get("newest_ts_ms"))),
        }


def _period(since: datetime, counted: dict, stored: int) -> dict:
    return {
        "from": since,
        "messages": {"received": counted["received"], "accepted": counted["accepted"],
                     "rejected": counted["rejected"]},
        "readings": {"accepted": counted["readings"], "stored": int(stored)},
    }
