"""Housekeeping: partitions ahead of time, the token index rebuilt from Postgres, deleted devices purged,
per-device stored counts compacted."""
from __future__ import annotations

import logging
import time

import redis

from visiontrack import device_stats
from visiontrack.migrate import ensure_partitions as ensure_partition_range
from visiontrack.tokens import RebuildSkipped, rebuild_index

from ..celery_app import app, config
from .. import metrics, state
from .alerts import resolve_deleted_devices

log = logging.getLogger("aggregator.tasks.maintenance")


@app.task(name="aggregator.ensure_partitions", ignore_result=True)
def ensure_partitions() -> int:
    with state.get().db.transaction() as cur, cur.connection.cursor() as plain:  # it reads rows as tuples
        created = ensure_partition_range(plain, 0, config.partitions_ahead_days)
    if created:
        log.info("created %d telemetry partitions ahead", created)
    return created


@app.task(name="aggregator.repair_token_index", ignore_result=True)
def repair_token_index() -> int:
    """Rebuild the Redis token index from Postgres, so the two cannot drift for long."""
    st = state.get()
    try:
        with st.db.transaction() as cur:
            count = rebuild_index(cur.connection, st.redis, config.token_index_key)
    except RebuildSkipped as why:
        log.warning("token index not rebuilt this round: %s", why)
        return -1
    metrics.TOKEN_INDEX_SIZE.set(count)
    return count


_PURGES_PER_ROUND = 10  # one transaction's worth


@app.task(name="aggregator.purge_deleted_devices", ignore_result=True)
def purge_deleted_devices(batch_rows: int = 50_000) -> int:
    """Delete the telemetry (raw, rollups, latest values) and alerts of deleted devices, a bounded chunk
    at a time.

    Firing alerts are resolved first (aggregator.alerting, "resolved" webhooks through the outbox) and
    only resolved ones are deleted: an alert that fired while the device was being deleted waits for the
    next round, so none goes unannounced. A purge is kept for a grace period after it empties, so readings
    of the device still in the stream when it was deleted are removed too. Purges take turns, the never
    visited first, so those waiting out their grace hold no later deletion back.
    """
    st = state.get()
    with st.db.transaction() as cur:
        cur.execute("SELECT device_id, requested_at < now() - interval '10 minutes' AS settled, "
                    "visited_at IS NULL AS fresh "
                    "FROM device_purges ORDER BY visited_at NULLS FIRST, requested_at LIMIT %s", (_PURGES_PER_ROUND,))
        purges = cur.fetchall()
    if not purges:
        return 0
    device_ids = [purge["device_id"] for purge in purges]
    if not resolve_deleted_devices(device_ids):
        log.info("alert evaluation busy; it resolves the alerts of deleted devices %s itself", device_ids)
    removed = 0
    with st.db.transaction() as cur:
        for purge in purges:
            device_id = purge["device_id"]
            deleted = 0
            for table, col in (("telemetry", "ts"), ("telemetry_1m", "bucket"), ("telemetry_1h", "bucket")):
                cur.execute(f"""DELETE FROM {table} WHERE device_id = %(d)s AND (metric, {col}) IN (
                                    SELECT metric, {col} FROM {table} WHERE device_id = %(d)s LIMIT %(n)s)""",
                            {"d": device_id, "n": batch_rows})
                deleted += cur.rowcount
            for table in ("telemetry_latest", "alert_state", "device_stats"):
                cur.execute(f"DELETE FROM {table} WHERE device_id = %s", (device_id,))
                deleted += cur.rowcount
            cur.execute("DELETE FROM alert_events WHERE device_id = %s AND state = 'resolved'", (device_id,))
            deleted += cur.rowcount
            removed += deleted
            # Its turn taken: the next rounds visit the others first (migration 0008).
            cur.execute("UPDATE device_purges SET visited_at = now() WHERE device_id = %s", (device_id,))
            if deleted == 0 and purge["settled"]:
                # An alert left is firing: the purge waits for it to be resolved and announced next round.
                cur.execute("""DELETE FROM device_purges WHERE device_id = %(d)s
                               AND NOT EXISTS (SELECT 1 FROM alert_events WHERE device_id = %(d)s)""",
                            {"d": device_id})
                if cur.rowcount:
                    log.info("purged the telemetry of deleted device %d", device_id)
    _forget_ingest_counts(st, device_ids)
    # Again at once while there is more to do: rows left, or purges never visited yet (a burst of deletions),
    # which come first in the order above. Purges only waiting out their grace wait for the schedule.
    if removed >= batch_rows or (len(purges) == _PURGES_PER_ROUND and purges[-1]["fresh"]):
        purge_deleted_devices.apply_async(countdown=1)
    return removed


def _forget_ingest_counts(st, device_ids: list[int]) -> None:
    """The ingestor's counters of deleted devices (accounting: a failure waits for the next round)."""
    now_ms = int(time.time() * 1000)
    keys = [k for d in device_ids for k in device_stats.all_keys(d, now_ms)]
    try:
        # Many slots in a Redis Cluster: its client sends one DEL per slot (redis-py's RedisCluster.delete,
        # `_split_command_across_slots`), not atomic together, which counters being forgotten need not be.
        st.redis.delete(*keys)
    except redis.RedisError as exc:
        log.warning("could not delete the ingest counters of deleted devices %s: %s", device_ids, exc)


# Buckets older than this are folded into one row per device (bucket '-infinity'): the stats endpoint only
# tells the last hour apart, and a device then keeps about 25 rows, not one per 5 minutes it ever sent in.
_COMPACT = """WITH old AS (
                  DELETE FROM device_stats WHERE bucket < now() - interval '2 hours' AND bucket > '-infinity'
                  RETURNING device_id, stored)
              INSERT INTO device_stats (device_id, bucket, stored)
              SELECT device_id, '-infinity', sum(stored) FROM old GROUP BY 1 ORDER BY 1
              ON CONFLICT (device_id, bucket) DO UPDATE SET stored = device_stats.stored + excluded.stored"""


@app.task(name="aggregator.compact_device_stats", ignore_result=True)
def compact_device_stats() -> int:
    """Fold the stored counts of buckets older than two hours into each device's running total."""
    with state.get().db.transaction() as cur:
        cur.execute(_COMPACT)
        return cur.rowcount
