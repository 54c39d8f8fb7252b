"""Retention drops whole expired partitions (raw, 1m and 1h rollups, each after its own setting), and
deleting a device purges its raw rows, rollups, latest values and alerts (real Postgres and Celery)."""
from __future__ import annotations

import re
import time
import uuid
from datetime import date, timedelta

import psycopg2
import pytest
import redis
import requests
from celery import Celery

from aggregator.copy_encoding import encode_entry
from aggregator.storage import TelemetryStorage
from aggregator.tasks.retention import drop_expired, expired
from visiontrack import device_stats
from visiontrack.db import Database
from visiontrack.stream import Entry

from tests.conftest import poll
from tests.integration.api import ADMIN


def test_expired_partitions_by_name_and_table():
    today = date(2026, 11, 27)
    names = ["telemetry_20261027", "telemetry_20261028", "telemetry_1m_20260828", "telemetry_1m_20260829",
             "telemetry_1h_202510", "telemetry_1h_202511", "telemetry_other"]
    days = {"telemetry": 30, "telemetry_1m": 90, "telemetry_1h": 390}
    # A partition goes once its last day ends on or before today - retention: raw 2026-10-27 ends at 10-28 =
    # today - 30 days; 1m 2026-08-28 ends at 08-29 = today - 90; 1h October 2025 ends at 11-01 < today - 390.
    assert expired(names, today, days) == ["telemetry_1h_202510", "telemetry_1m_20260828", "telemetry_20261027"]


def _tables(db, prefix: str) -> set[str]:
    with db.cursor() as cur:
        cur.execute("SELECT relname FROM pg_class WHERE relname LIKE %s", (prefix + "%",))
        return {r[0] for r in cur.fetchall()}


def test_retention_drops_whole_partitions_only(db, postgres):
    with db.cursor() as cur:
        for day in ("2026-06-01", "2026-06-02"):
            cur.execute("SELECT vt_ensure_telemetry_partition(%s::date)", (day,))
        cur.execute("INSERT INTO telemetry VALUES (1, 'x', '2026-06-01T12:00:00Z', 1), (1, 'x', '2026-06-02T12:00:00Z', 2)")
    today = date(2026, 6, 2) + timedelta(days=30)  # 2026-06-01 is a whole day past 30 days of retention
    dropped = drop_expired(Database(postgres.url, 1), {"telemetry": 30, "telemetry_1m": 31, "telemetry_1h": 400},
                           today)
    assert "telemetry_20260601" in dropped and "telemetry_20260602" not in dropped
    assert "telemetry_1m_20260601" not in dropped and not any(n.startswith("telemetry_1h") for n in dropped)
    assert "telemetry_20260601" not in _tables(db, "telemetry_2026060")
    with db.cursor() as cur:
        cur.execute("SELECT value FROM telemetry WHERE device_id = 1 AND metric = 'x'")
        assert [r[0] for r in cur.fetchall()] == [2.0]
    later = drop_expired(Database(postgres.url, 1), {"telemetry": 30, "telemetry_1m": 30, "telemetry_1h": 30},
                         date(2026, 8, 2))
    assert {"telemetry_20260602", "telemetry_1m_20260601", "telemetry_1m_20260602", "telemetry_1h_202606"} <= set(later)


@pytest.fixture(scope="module")
def worker(base_env, run_dir):
    from tests.conftest import Aggregator

    agg = Aggregator(base_env, run_dir)
    agg.start_worker()
    yield agg
    agg.stop()


def _device_with_a_reading(registry_url, postgres, prefix: str) -> dict:
    """A registered device with one reading stored (raw row, rollups, latest value)."""
    device = requests.post(f"{registry_url}/api/devices/", json={"name": f"{prefix}-{uuid.uuid4().hex[:8]}"},
                           headers=ADMIN).json()
    conn = psycopg2.connect(postgres.url)
    try:
        now = int(time.time() * 1000)
        TelemetryStorage(conn).store([encode_entry(Entry("1-0", device["id"], [["t", now - 1000, 1.0]], now),
                                                   -10**9, 10**9)])
    finally:
        conn.close()
    return device


def _send_purge(base_env) -> None:
    Celery(broker=base_env["REDIS_URL"]).send_task("aggregator.purge_deleted_devices", queue="visiontrack")


def test_deleting_a_device_purges_its_rollups_latest_values_and_alerts(registry_url, db, postgres, base_env, worker):
    device = _device_with_a_reading(registry_url, postgres, "purge")
    rule = requests.post(f"{registry_url}/api/alert-rules/", json={"name": "p", "metric": "t", "op": ">",
                                                                    "threshold": 0}, headers=ADMIN).json()
    with db.cursor() as cur:
        cur.execute("INSERT INTO alert_events (rule_id, device_id, state, value, started_at) "
                    "VALUES (%s, %s, 'firing', 1, now())", (rule["id"], device["id"]))
    tables = ("telemetry", "telemetry_1m", "telemetry_1h", "telemetry_latest", "alert_events", "device_stats")

    def counts():
        with db.cursor() as cur:
            out = []
            for table in tables:
                cur.execute(f"SELECT count(*) FROM {table} WHERE device_id = %s", (device["id"],))
                out.append(cur.fetchone()[0])
            return out

    # The ingestor's counters of the device, as its flush leaves them.
    counters = redis.Redis.from_url(base_env["REDIS_URL"])
    keys = [device_stats.total_key(device["id"]),
            device_stats.bucket_key(device["id"], device_stats.window(int(time.time() * 1000))[-1])]
    for key in keys:
        counters.hset(key, mapping={"received": 1, "accepted": 1, "readings": 1})
    assert counts() == [1, 1, 1, 1, 1, 1]
    assert requests.delete(f"{registry_url}/api/devices/{device['id']}", headers=ADMIN).status_code == 204
    _send_purge(base_env)
    poll(lambda: counts() == [0, 0, 0, 0, 0, 0], timeout=30, what="the device's data purged")
    poll(lambda: counters.exists(*keys) == 0, timeout=10, what="the device's counters deleted")


def test_old_buckets_of_stored_counts_fold_into_one_row_per_device(db, base_env, worker):
    device_id = 8_500_000_000 + uuid.uuid4().int % 1_000_000
    with db.cursor() as cur:
        cur.execute("""INSERT INTO device_stats (device_id, bucket, stored) VALUES
                       (%(d)s, date_trunc('minute', now()) - interval '3 hours', 5),
                       (%(d)s, date_trunc('minute', now()) - interval '5 hours', 7),
                       (%(d)s, date_trunc('minute', now()) - interval '10 minutes', 2),
                       (%(d)s, '-infinity', 100)""", {"d": device_id})

    def rows():
        with db.cursor() as cur:
            cur.execute("SELECT bucket = '-infinity', stored FROM device_stats WHERE device_id = %s ORDER BY bucket",
                        (device_id,))
            return cur.fetchall()

    try:
        Celery(broker=base_env["REDIS_URL"]).send_task("aggregator.compact_device_stats", queue="visiontrack")
        poll(lambda: rows() == [(True, 112), (False, 2)], timeout=30, what="old buckets folded")
    finally:
        with db.cursor() as cur:
            cur.execute("DELETE FROM device_stats WHERE device_id = %s", (device_id,))


def test_a_deletion_is_not_held_back_by_earlier_ones_waiting_out_their_grace(registry_url, db, postgres, base_env,
                                                                            worker):
    """A burst of deletions (here 25 empty purges, older and still in their ten minutes of grace) used to fill
    every round's ten places: a later device's telemetry stayed until their grace ran out."""
    with db.cursor() as cur:
        cur.execute("INSERT INTO device_purges (device_id, requested_at) SELECT 10^12 + n, now() - interval '1 minute' "
                    "FROM generate_series(1, 25) AS n")
    try:
        device = _device_with_a_reading(registry_url, postgres, "later")
        assert requests.delete(f"{registry_url}/api/devices/{device['id']}", headers=ADMIN).status_code == 204

        def left() -> int:
            with db.cursor() as cur:
                cur.execute("SELECT count(*) FROM telemetry_latest WHERE device_id = %s", (device["id"],))
                return cur.fetchone()[0]

        _send_purge(base_env)
        poll(lambda: left() == 0, timeout=30, what="the later device's data purged")
    finally:
        with db.cursor() as cur:
            cur.execute("DELETE FROM device_purges WHERE device_id > 10^12")


def test_the_scheduled_task_creates_partitions_ahead(db, base_env, worker):
    """The task as the beat sends it, on a real worker: it recreates the furthest partition ahead, dropped
    here (empty: it lies in the future)."""
    furthest = max(t for t in _tables(db, "telemetry_2") if re.fullmatch(r"telemetry_\d{8}", t))
    with db.cursor() as cur:
        cur.execute(f"DROP TABLE {furthest}")
    Celery(broker=base_env["REDIS_URL"]).send_task("aggregator.ensure_partitions", queue="visiontrack")
    poll(lambda: furthest in _tables(db, "telemetry_2"), timeout=30, what=f"{furthest} created again")
