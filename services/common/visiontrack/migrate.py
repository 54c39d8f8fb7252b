"""Versioned plain-SQL migrations: applied in order, once, under an advisory lock.

Safe to run twice and concurrently (every runner takes the same lock; the second finds nothing to do).
A migration file that changed after it was applied is refused: migrations are append-only.
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg2

log = logging.getLogger("visiontrack.migrate")

LOCK_ID = 0x5654_4D49  # "VTMI"
_NAME_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    out = []
    for item in resources.files("visiontrack.migrations").iterdir():
        m = _NAME_RE.match(item.name)
        if m:
            out.append(Migration(int(m.group(1)), m.group(2), item.read_text(encoding="utf-8")))
    out.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in out]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions: {versions}")
    return out


class MigrationError(RuntimeError):
    pass


def migrate(dsn: str, partitions_ahead_days: int = 3) -> list[int]:
    """Apply what is missing; return the versions applied now."""
    conn = psycopg2.connect(dsn, application_name="visiontrack-migrate")
    conn.autocommit = True
    applied_now: list[int] = []
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (LOCK_ID,))
            try:
                cur.execute("""CREATE TABLE IF NOT EXISTS schema_migrations (
                                   version    integer PRIMARY KEY,
                                   name       text NOT NULL,
                                   checksum   text NOT NULL,
                                   applied_at timestamptz NOT NULL DEFAULT now())""")
                cur.execute("SELECT version, checksum FROM schema_migrations")
                done = dict(cur.fetchall())
                for mig in available():
                    if mig.version in done:
                        if done[mig.version] != mig.checksum:
                            raise MigrationError(f"migration {mig.version:04d}_{mig.name} changed after it was "
                                                 "applied; add a new migration instead")
                        continue
                    log.info("applying migration %04d_%s", mig.version, mig.name)
                    conn.autocommit = False
                    try:
                        cur.execute(mig.sql)
                        cur.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                                    (mig.version, mig.name, mig.checksum))
                        conn.commit()
                    except BaseException:
                        conn.rollback()
                        raise
                    finally:
                        conn.autocommit = True
                    applied_now.append(mig.version)
                created = ensure_partitions(cur, -1, partitions_ahead_days)
                if created:
                    log.info("created %d telemetry partitions", created)
            finally:
                cur.execute("SELECT pg_advisory_unlock(%s)", (LOCK_ID,))
    finally:
        conn.close()
    return applied_now


def ensure_partitions(cur, from_day_offset: int, to_day_offset: int) -> int:
    """Make sure the UTC-day partitions from today+from to today+to exist; return how many were created."""
    cur.execute("""SELECT count(*) FILTER (WHERE vt_ensure_telemetry_partition(d::date))
                   FROM generate_series((now() AT TIME ZONE 'UTC')::date + %s,
                                        (now() AT TIME ZONE 'UTC')::date + %s, interval '1 day') AS d""",
                (from_day_offset, to_day_offset))
    return cur.fetchone()[0]
