"""Versioned plain-SQL migrations: applied in order, once, under an advisory lock.

Safe to run twice and concurrently (every runner takes the same lock; the second finds nothing to do).
A migration file that changed after it was applied is refused: migrations are append-only.
`wait_for_schema` is the other side: a part waits until the migrations its image ships are applied.
"""
from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from importlib import resources
from typing import Mapping

import psycopg2
import psycopg2.extensions

log = logging.getLogger("visiontrack.migrate")

LOCK_ID = 0x5654_4D49  # "VTMI"
_NAME_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
CONNECT_TIMEOUT_SECONDS = 5
POLL_SECONDS = 1.0
REPORT_SECONDS = 5.0  # how often a wait says what it waits for


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


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


class SchemaTimeout(RuntimeError):
    """The schema did not reach this image's version in time; the message says what was missing."""


def missing(applied: Mapping[int, str], shipped: list[Migration]) -> list[Migration]:
    """The shipped migrations not in `applied` (version -> checksum); versions beyond them are fine (a newer
    image migrated). Raise MigrationError for one applied from a different file."""
    for mig in shipped:
        if mig.version in applied and applied[mig.version] != mig.checksum:
            raise MigrationError(f"migration {mig.label} changed after it was applied; add a new migration instead")
    return [mig for mig in shipped if mig.version not in applied]


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def _timeout_unless_given(dsn: str) -> dict:
    """A bounded connect (a dropped SYN would otherwise hold it for minutes), unless the URL sets its own."""
    try:
        given = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError:
        given = {}  # connect() names what is wrong with it
    return {} if "connect_timeout" in given else {"connect_timeout": CONNECT_TIMEOUT_SECONDS}


def connect(dsn: str, application_name: str, wait_seconds: float = 0.0):
    """A connection; while Postgres refuses or does not answer, try again for up to `wait_seconds`."""
    deadline = time.monotonic() + wait_seconds
    report_at = 0.0
    while True:
        try:
            return psycopg2.connect(dsn, application_name=application_name, **_timeout_unless_given(dsn))
        except psycopg2.OperationalError as exc:
            now = time.monotonic()
            if now >= deadline:
                raise
            if now >= report_at:
                log.info("waiting for postgres (%s)", one_line(exc))
                report_at = now + REPORT_SECONDS
            time.sleep(min(POLL_SECONDS, deadline - now))


def migrate(dsn: str, partitions_ahead_days: int = 3, wait_seconds: float = 0.0) -> list[int]:
    """Apply what is missing; return the versions applied now. `wait_seconds`: how long to wait for
    Postgres to accept a connection first (a Job started beside its database)."""
    conn = connect(dsn, "visiontrack-migrate", wait_seconds)
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
                for mig in missing(dict(cur.fetchall()), available()):
                    log.info("applying migration %s", mig.label)
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


def recorded(cur) -> dict[int, str]:
    """version -> checksum of the applied migrations, as schema_migrations records them; {} before the first
    migrate."""
    cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not cur.fetchone()[0]:
        return {}
    cur.execute("SELECT version, checksum FROM schema_migrations")
    return dict(cur.fetchall())


def _waiting_for(dsn: str, shipped: list[Migration]) -> str | None:
    """What the schema still lacks for `shipped`, in words; None when nothing."""
    try:
        conn = psycopg2.connect(dsn, application_name="visiontrack-wait-for-schema", **_timeout_unless_given(dsn))
    except psycopg2.Error as exc:
        return f"postgres ({one_line(exc)})"
    try:
        with conn.cursor() as cur:
            done = recorded(cur)
    except psycopg2.Error as exc:
        return f"postgres ({one_line(exc)})"
    finally:
        conn.close()
    todo = missing(done, shipped)
    return f"migrations {', '.join(m.label for m in todo)} (applied by `visiontrack migrate`)" if todo else None


def wait_for_schema(dsn: str, timeout: float) -> Migration | None:
    """Return once every migration this image ships is applied (a newer schema is fine), with the latest of
    them. Postgres refusing or not answering counts as not yet. Raise SchemaTimeout after `timeout`
    seconds (0: look once), MigrationError at once for an applied migration whose file changed."""
    shipped = available()
    deadline = time.monotonic() + timeout
    report_at = 0.0
    while (waiting_for := _waiting_for(dsn, shipped)) is not None:
        now = time.monotonic()
        if now >= deadline:
            raise SchemaTimeout(f"schema not ready after {timeout:g} s: waiting for {waiting_for}")
        if now >= report_at:
            log.info("waiting for %s", waiting_for)
            report_at = now + REPORT_SECONDS
        time.sleep(min(POLL_SECONDS, deadline - now))
    return shipped[-1] if shipped else None


def ensure_partitions(cur, from_day_offset: int, to_day_offset: int) -> int:
    """Make sure the UTC-day partitions from today+from to today+to exist; return how many were created."""
    cur.execute("""SELECT count(*) FILTER (WHERE vt_ensure_telemetry_partition(d::date))
                   FROM generate_series((now() AT TIME ZONE 'UTC')::date + %s,
                                        (now() AT TIME ZONE 'UTC')::date + %s, interval '1 day') AS d""",
                (from_day_offset, to_day_offset))
    return cur.fetchone()[0]
