"""One batch of stream entries into Postgres, in one transaction.

Raw rows by binary COPY (or, when the batch holds duplicates, through a temporary table and `INSERT ... ON
CONFLICT DO NOTHING`), with the rollups, latest values, `last_seen_at` and per-device stored counts of the
rows really inserted, in the same transaction: see docs/design.md, "Storing a batch".
"""
from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass

import psycopg2
import psycopg2.errors

from . import metrics
from .copy_encoding import COPY_HEADER, COPY_TRAILER, DAY_MS, EncodedEntry, encode_rollup_row, fold_rollups

log = logging.getLogger("aggregator.storage")

COPY_TELEMETRY = "COPY telemetry (device_id, metric, ts, value) FROM STDIN WITH (FORMAT binary)"
_STAGING = """CREATE TEMP TABLE IF NOT EXISTS telemetry_incoming (
                  device_id bigint, metric text COLLATE "C", ts timestamptz, value double precision
              ) ON COMMIT DELETE ROWS"""
_COPY_STAGING = "COPY telemetry_incoming (device_id, metric, ts, value) FROM STDIN WITH (FORMAT binary)"
_MERGE = "INSERT INTO telemetry SELECT * FROM telemetry_incoming ON CONFLICT DO NOTHING"
# Without rollups, what was inserted per device (for device_stats).
_MERGE_PER_DEVICE = """WITH inserted AS (
                           INSERT INTO telemetry SELECT * FROM telemetry_incoming ON CONFLICT DO NOTHING
                           RETURNING device_id)
                       SELECT device_id, count(*) FROM inserted GROUP BY 1"""

_ROLLUP_STAGING = """CREATE TEMP TABLE IF NOT EXISTS rollup_incoming (
                         device_id bigint, metric text COLLATE "C", bucket timestamptz, count bigint,
                         sum double precision, min double precision, max double precision,
                         last_ts timestamptz, last_value double precision
                     ) ON COMMIT DELETE ROWS"""
_COPY_ROLLUP = ("COPY rollup_incoming (device_id, metric, bucket, count, sum, min, max, last_ts, last_value) "
                "FROM STDIN WITH (FORMAT binary)")
_EPOCH = "timestamptz '2000-01-01 00:00:00+00'"
# The slow path: insert what is new, and aggregate exactly those rows.
_MERGE_RETURNING = f"""
WITH inserted AS (
    INSERT INTO telemetry SELECT * FROM telemetry_incoming ON CONFLICT DO NOTHING
    RETURNING device_id, metric, ts, value
)
INSERT INTO rollup_incoming
SELECT device_id, metric, date_bin('1 minute', ts, {_EPOCH}), count(*), sum(value), min(value), max(value),
       max(ts), (array_agg(value ORDER BY ts DESC))[1]
FROM inserted GROUP BY 1, 2, 3"""
_ADDITIVE = """ON CONFLICT (device_id, metric, bucket) DO UPDATE SET
                   count = {t}.count + excluded.count, sum = {t}.sum + excluded.sum,
                   min = least({t}.min, excluded.min), max = greatest({t}.max, excluded.max)"""
# Sorted, so that concurrent batches take row locks in the same order.
_UPSERT_1M = ("INSERT INTO telemetry_1m (device_id, metric, bucket, count, sum, min, max) "
              "SELECT device_id, metric, bucket, count, sum, min, max FROM rollup_incoming "
              "ORDER BY device_id, metric, bucket " + _ADDITIVE.format(t="telemetry_1m"))
_UPSERT_1H = (f"INSERT INTO telemetry_1h (device_id, metric, bucket, count, sum, min, max) "
              f"SELECT device_id, metric, date_bin('1 hour', bucket, {_EPOCH}), sum(count), sum(sum), min(min), "
              f"max(max) FROM rollup_incoming GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 "
              + _ADDITIVE.format(t="telemetry_1h"))
_UPSERT_LATEST = """INSERT INTO telemetry_latest (device_id, metric, ts, value)
                    SELECT DISTINCT ON (device_id, metric) device_id, metric, last_ts, last_value
                    FROM rollup_incoming ORDER BY device_id, metric, last_ts DESC
                    ON CONFLICT (device_id, metric) DO UPDATE SET ts = excluded.ts, value = excluded.value
                    WHERE telemetry_latest.ts < excluded.ts"""
_LAST_SEEN = """WITH seen AS (
                    SELECT d.id, s.at FROM devices d
                    JOIN (SELECT id, to_timestamp(at_ms / 1000.0) AS at
                          FROM unnest(%s::bigint[], %s::bigint[]) AS u(id, at_ms)) s ON s.id = d.id
                    WHERE d.last_seen_at IS NULL OR d.last_seen_at < s.at
                    ORDER BY d.id FOR NO KEY UPDATE OF d)
                UPDATE devices d SET last_seen_at = greatest(d.last_seen_at, seen.at) FROM seen
                WHERE d.id = seen.id"""

# Readings stored per device and 5-minute bucket (GET /api/devices/{id}/stats): one row per device per
# batch, from the rows really inserted, in the batch's transaction, so a redelivered batch adds nothing.
# Sorted, like the rollups, so concurrent batches lock rows in the same order.
_DEVICE_STATS = f"""INSERT INTO device_stats (device_id, bucket, stored)
                   SELECT u.id, date_bin('5 minutes', now(), {_EPOCH}), u.n
                   FROM unnest(%s::bigint[], %s::bigint[]) AS u(id, n) ORDER BY 1
                   ON CONFLICT (device_id, bucket) DO UPDATE SET stored = device_stats.stored + excluded.stored"""
# With rollups, the staged 1-minute partials hold exactly the rows inserted, on either path: counted
# there, in Postgres, with no arrays to send.
_DEVICE_STATS_FROM_ROLLUPS = f"""INSERT INTO device_stats (device_id, bucket, stored)
                                SELECT device_id, date_bin('5 minutes', now(), {_EPOCH}), sum(count)::bigint
                                FROM rollup_incoming GROUP BY 1 ORDER BY 1
                                ON CONFLICT (device_id, bucket) DO UPDATE
                                SET stored = device_stats.stored + excluded.stored"""


@dataclass(frozen=True)
class StoreResult:
    readings: int
    inserted: int

    @property
    def duplicates(self) -> int:
        return self.readings - self.inserted


class StandbyBehind(psycopg2.OperationalError):
    """No standby flushed a batch's commit in time: the batch is kept unacknowledged, to be stored again (its
    rows are then duplicates, dropped) once a standby keeps up."""


# The WAL position just after this session's commit; how many standbys stream, and whether one has flushed
# up to a position.
_WAL_AFTER_COMMIT = "SELECT pg_current_wal_insert_lsn()"  # not _lsn(): an asynchronous commit may not be written yet
_STANDBY_FLUSHED = ("SELECT count(*), coalesce(bool_or(flush_lsn >= %s::pg_lsn), false) FROM pg_stat_replication "
                    "WHERE state = 'streaming'")
_STANDBY_POLL_SECONDS = 0.002


class TelemetryStorage:
    def __init__(self, conn, rollups: bool = True, device_stats: bool = True, standby_confirm_seconds: float = 0.0):
        self.conn = conn
        self.rollups = rollups  # off only to measure what they cost
        self.device_stats = device_stats  # off only to measure what it costs (bench/pipeline.py)
        self.standby_confirm_seconds = standby_confirm_seconds  # 0: acknowledge once the primary committed
        self.known_days: set[int] = set()
        self._staged = False

    def ensure_partitions(self, days: set[int]) -> None:
        missing = days - self.known_days
        if not missing:
            return
        self.conn.autocommit = True
        try:
            with self.conn.cursor() as cur:
                for day in sorted(missing):
                    cur.execute("SELECT vt_ensure_telemetry_partition(to_timestamp(%s)::date)", (day * DAY_MS / 1000,))
        finally:
            self.conn.autocommit = False
        self.known_days |= missing

    def store(self, batch: list[EncodedEntry], rollup_rows: bytes | None = None) -> StoreResult:
        """Write the batch and commit; raise (after rollback) if it cannot be written as a whole.

        `rollup_rows`: the batch's `rollup_payload`, when the caller made it ahead (off the thread that
        waits for Postgres); made here otherwise."""
        if self.rollups and rollup_rows is None:
            rollup_rows = rollup_payload(batch)
        try:
            return self._store(batch, rollup_rows)
        except psycopg2.errors.CheckViolation:
            # "no partition for row": a partition this process knew of was dropped (retention). Look again.
            self.known_days.clear()
            return self._store(batch, rollup_rows)

    def _store(self, batch: list[EncodedEntry], rollup_rows: bytes | None) -> StoreResult:
        self.ensure_partitions(set().union(*(range(e.first_day, e.last_day + 1) for e in batch)))
        payload = COPY_HEADER + b"".join(e.rows for e in batch) + COPY_TRAILER
        total = sum(e.count for e in batch)
        try:
            with self.conn.cursor() as cur:
                if self.rollups and not self._staged:
                    cur.execute(_ROLLUP_STAGING)
                    self._staged = True
                cur.execute("SAVEPOINT fast_path")
                per_device: dict[int, int] | None = None  # what was inserted, when not the whole batch
                try:
                    copy_in(cur, COPY_TELEMETRY, payload)
                    inserted = total
                    if self.rollups:
                        copy_in(cur, _COPY_ROLLUP, rollup_rows)
                except psycopg2.errors.UniqueViolation:
                    cur.execute("ROLLBACK TO SAVEPOINT fast_path")
                    inserted, per_device = self._deduplicating_insert(cur, payload)
                if self.rollups and inserted:
                    cur.execute(_UPSERT_1M)
                    cur.execute(_UPSERT_1H)
                    cur.execute(_UPSERT_LATEST)
                if self.rollups:
                    ids, seen = _last_seen(batch)
                    cur.execute(_LAST_SEEN, (ids, seen))
                if self.device_stats and inserted:  # last: its row locks are held the shortest
                    if self.rollups:
                        cur.execute(_DEVICE_STATS_FROM_ROLLUPS)
                    else:
                        ids, counts = _stored(batch) if per_device is None else (list(per_device),
                                                                                 list(per_device.values()))
                        cur.execute(_DEVICE_STATS, (ids, counts))
            self.conn.commit()
        except BaseException:
            self.conn.rollback()
            self._staged = False  # a staging table made in this transaction is gone with it
            raise
        if self.standby_confirm_seconds:
            self.wait_for_standby()
        return StoreResult(total, inserted)

    def wait_for_standby(self) -> None:
        """Until a streaming standby has flushed this commit (docs/scale-out.md, "An asynchronous standby"): the
        caller acknowledges the batch's entries after, so a standby promoted later holds every acknowledged
        reading. With no standby streaming (the one there was just promoted, say) there is nothing to wait
        for: the batch is acknowledged at commit and counted, rather than the pipeline stopping until a new
        standby is built."""
        self.conn.autocommit = True  # reads of the server's state, no transaction to keep open
        try:
            with self.conn.cursor() as cur:
                cur.execute(_WAL_AFTER_COMMIT)
                position = cur.fetchone()[0]
                deadline = time.monotonic() + self.standby_confirm_seconds
                while True:
                    cur.execute(_STANDBY_FLUSHED, (position,))
                    streaming, flushed = cur.fetchone()
                    if flushed or not streaming:
                        metrics.STANDBY_CONFIRMS.labels("confirmed" if flushed else "no_standby").inc()
                        return
                    if time.monotonic() >= deadline:
                        metrics.STANDBY_CONFIRMS.labels("behind").inc()
                        raise StandbyBehind(f"no standby flushed WAL position {position} within "
                                            f"{self.standby_confirm_seconds:g}s")
                    time.sleep(_STANDBY_POLL_SECONDS)
        finally:
            self.conn.autocommit = False

    def _deduplicating_insert(self, cur, payload: bytes) -> tuple[int, dict[int, int] | None]:
        """The rows inserted, and per device when device_stats needs them without rollups."""
        cur.execute(_STAGING)
        copy_in(cur, _COPY_STAGING, payload)
        if not self.rollups:
            if not self.device_stats:
                cur.execute(_MERGE)
                return cur.rowcount, None
            cur.execute(_MERGE_PER_DEVICE)
            per_device = {int(d): int(n) for d, n in cur.fetchall()}
            return sum(per_device.values()), per_device
        cur.execute(_MERGE_RETURNING)
        cur.execute("SELECT coalesce(sum(count), 0) FROM rollup_incoming")
        return int(cur.fetchone()[0]), None  # device stats are counted from rollup_incoming


def copy_in(cur, sql: str, payload: bytes) -> None:
    """COPY `payload` in one piece. psycopg2 takes the GIL back for every chunk it reads (8 KiB by default);
    with the next batch being encoded on another thread, each of those waits out a GIL switch interval,
    which slowed the COPY of a 50,000-reading batch by half."""
    cur.copy_expert(sql, io.BytesIO(payload), size=max(len(payload), 8192))


def rollup_payload(batch: list[EncodedEntry]) -> bytes:
    """The batch's 1-minute partial rollups as binary COPY rows (for the fast path, where every row goes in)."""
    return partials_payload(fold_rollups(batch))


def partials_payload(partials: dict) -> bytes:
    """Folded 1-minute partials (`fold_rollups`) as binary COPY rows."""
    rows = [encode_rollup_row(device_id, metric, minute, part)
            for (device_id, metric, minute), part in partials.items()]
    return COPY_HEADER + b"".join(rows) + COPY_TRAILER


def _stored(batch: list[EncodedEntry]) -> tuple[list[int], list[int]]:
    """Per device, the readings of the batch (all inserted, on the fast path)."""
    stored: dict[int, int] = {}
    for encoded in batch:
        device_id = encoded.entry.device_id
        stored[device_id] = stored.get(device_id, 0) + encoded.count
    return list(stored), list(stored.values())


def _last_seen(batch: list[EncodedEntry]) -> tuple[list[int], list[int]]:
    """Per device, the newest receive time in the batch (epoch ms)."""
    seen: dict[int, int] = {}
    for encoded in batch:
        entry = encoded.entry
        if entry.received_ms > seen.get(entry.device_id, -1):
            seen[entry.device_id] = entry.received_ms
    return list(seen), list(seen.values())
