"""How far the query service's read server (VT_DATABASE_READ_URL, a hot standby) is behind the primary,
exported as `visiontrack_query_replica_lag_seconds`.

Sampled when /metrics is scraped, at most every SAMPLE_SECONDS per process, on a connection of its own:
never on a request's path. A standby that has replayed everything it received counts 0 however long ago
the last commit was (a quiet primary is not a lagging standby). Without a read server the primary answers
reads and the lag is 0. Lag is exported, not judged: /readyz only asks that the read server answer.
"""
from __future__ import annotations

import logging
import threading
import time

import psycopg2

from .metrics import REPLICA_LAG

log = logging.getLogger("query.replica_lag")

SAMPLE_SECONDS = 5.0
_LAG = """SELECT CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
                      ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END"""


class LagSampler:
    def __init__(self, read_url: str | None):
        self.read_url = read_url
        self._lock = threading.Lock()
        self._at = float("-inf")
        if not read_url:
            REPLICA_LAG.set(0)

    def maybe_sample(self) -> None:
        """Sample unless a sample of this process is younger than SAMPLE_SECONDS (or one is under way)."""
        if not self.read_url or not self._lock.acquire(blocking=False):
            return
        try:
            if time.monotonic() - self._at < SAMPLE_SECONDS:
                return
            self._at = time.monotonic()
            REPLICA_LAG.set(self._measure())
        finally:
            self._lock.release()

    def _measure(self) -> float:
        try:
            conn = psycopg2.connect(self.read_url, connect_timeout=2, application_name="visiontrack-query-lag",
                                    options="-c statement_timeout=2000")
        except psycopg2.Error as exc:
            log.warning("replica lag not sampled: %s", " ".join(str(exc).split())[:200])
            return float("nan")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(_LAG)
                lag = cur.fetchone()[0]
            return 0.0 if lag is None else max(0.0, float(lag))  # NULL: not a standby (a primary reads)
        except psycopg2.Error as exc:
            log.warning("replica lag not sampled: %s", " ".join(str(exc).split())[:200])
            return float("nan")
        finally:
            conn.close()
