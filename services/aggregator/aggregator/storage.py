"""One batch of stream entries into Postgres, in one transaction.

Fast path: binary COPY straight into `telemetry`. A duplicate (a redelivered entry, a device resending)
makes COPY fail; only then the batch takes the slow path: COPY into a temporary table and
`INSERT ... ON CONFLICT DO NOTHING`, which drops the duplicates and counts them.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import psycopg2
import psycopg2.errors

from .copy_encoding import COPY_HEADER, COPY_TRAILER, DAY_MS, EncodedEntry

log = logging.getLogger("aggregator.storage")

_COPY_TELEMETRY = "COPY telemetry (device_id, metric, ts, value) FROM STDIN WITH (FORMAT binary)"
_STAGING = """CREATE TEMP TABLE IF NOT EXISTS telemetry_incoming (
                  device_id bigint, metric text, ts timestamptz, value double precision
              ) ON COMMIT DELETE ROWS"""
_COPY_STAGING = "COPY telemetry_incoming (device_id, metric, ts, value) FROM STDIN WITH (FORMAT binary)"
_MERGE = "INSERT INTO telemetry SELECT * FROM telemetry_incoming ON CONFLICT DO NOTHING"


@dataclass(frozen=True)
class StoreResult:
    readings: int
    inserted: int

    @property
    def duplicates(self) -> int:
        return self.readings - self.inserted


class TelemetryStorage:
    def __init__(self, conn):
        self.conn = conn
        self.known_days: set[int] = set()

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

    def store(self, batch: list[EncodedEntry]) -> StoreResult:
        """Write the batch and commit; raise (after rollback) if it cannot be written as a whole."""
        try:
            return self._store(batch)
        except psycopg2.errors.CheckViolation:
            # "no partition for row": a partition this process knew of was dropped (retention). Look again.
            self.known_days.clear()
            return self._store(batch)

    def _store(self, batch: list[EncodedEntry]) -> StoreResult:
        self.ensure_partitions(set().union(*(range(e.first_day, e.last_day + 1) for e in batch)))
        payload = COPY_HEADER + b"".join(e.rows for e in batch) + COPY_TRAILER
        total = sum(e.count for e in batch)
        try:
            with self.conn.cursor() as cur:
                cur.execute("SAVEPOINT fast_path")
                try:
                    cur.copy_expert(_COPY_TELEMETRY, io.BytesIO(payload))
                    inserted = total
                except psycopg2.errors.UniqueViolation:
                    cur.execute("ROLLBACK TO SAVEPOINT fast_path")
                    inserted = self._deduplicating_insert(cur, payload)
            self.conn.commit()
        except BaseException:
            self.conn.rollback()
            raise
        return StoreResult(total, inserted)

    def _deduplicating_insert(self, cur, payload: bytes) -> int:
        cur.execute(_STAGING)
        cur.copy_expert(_COPY_STAGING, io.BytesIO(payload))
        cur.execute(_MERGE)
        return cur.rowcount
