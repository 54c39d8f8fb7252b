"""Rollups, latest values and last_seen_at, written by the aggregator's storage in the raw insert's
transaction, from the rows really inserted only (real Postgres)."""
from __future__ import annotations

import itertools
import random
import time
import uuid

import psycopg2
import pytest

from aggregator.copy_encoding import encode_entry
from aggregator.storage import TelemetryStorage
from visiontrack.stream import Entry

MINUTE = 60_000
HOUR = 3_600_000


@pytest.fixture
def storage(postgres, base_env):
    conn = psycopg2.connect(postgres.url)
    yield TelemetryStorage(conn)
    conn.close()


@pytest.fixture
def device(db) -> int:
    with db.cursor() as cur:
        cur.execute("INSERT INTO devices (name) VALUES (%s) RETURNING id", (f"rollup-{uuid.uuid4().hex[:10]}",))
        return cur.fetchone()[0]


_ids = itertools.count(1)


def _entry(device_id: int, readings, received_ms: int | None = None) -> object:
    entry = Entry(f"{next(_ids)}-0", device_id, [list(r) for r in readings], received_ms or int(time.time() * 1000))
    return encode_entry(entry, -10**9, 10**9)


def _from_raw(db, device_id: int, width: str) -> list[tuple]:
    with db.cursor() as cur:
        cur.execute(f"""SELECT metric, date_bin('{width}', ts, timestamptz '2000-01-01 00:00+00'), count(*),
                               sum(value), min(value), max(value)
                        FROM telemetry WHERE device_id = %s GROUP BY 1, 2 ORDER BY 1, 2""", (device_id,))
        return cur.fetchall()


def _rollup(db, table: str, device_id: int) -> list[tuple]:
    with db.cursor() as cur:
        cur.execute(f"SELECT metric, bucket, count, sum, min, max FROM {table} WHERE device_id = %s "
                    "ORDER BY metric, bucket", (device_id,))
        return cur.fetchall()


def _assert_rollups_match_raw(db, device_id: int) -> None:
    for table, width in (("telemetry_1m", "1 minute"), ("telemetry_1h", "1 hour")):
        raw, rolled = _from_raw(db, device_id, width), _rollup(db, table, device_id)
        assert [r[:3] + r[4:] for r in rolled] == [r[:3] + r[4:] for r in raw], table
        assert [r[3] for r in rolled] == pytest.approx([r[3] for r in raw], rel=1e-12), table


def _latest(db, device_id: int) -> dict:
    with db.cursor() as cur:
        cur.execute("SELECT metric, (extract(epoch FROM ts) * 1000)::bigint, value FROM telemetry_latest "
                    "WHERE device_id = %s", (device_id,))
        return {m: (ts, v) for m, ts, v in cur.fetchall()}


def _now_minute() -> int:
    return int(time.time() * 1000) // MINUTE * MINUTE - 10 * MINUTE


def test_fast_path_rollups_equal_raw_and_latest_is_newest(db, storage, device):
    t0 = _now_minute() - 2 * HOUR
    rng = random.Random(1)
    readings = [("temp", t0 + i * 7_000, rng.uniform(-5, 30)) for i in range(1200)]
    readings += [("hum", t0 + i * 45_000, float(rng.randint(0, 100))) for i in range(200)]
    rng.shuffle(readings)
    batch = [_entry(device, readings[i:i + 97]) for i in range(0, len(readings), 97)]
    result = storage.store(batch)
    assert (result.readings, result.inserted) == (1400, 1400)
    _assert_rollups_match_raw(db, device)
    newest = {m: max((r for r in readings if r[0] == m), key=lambda r: r[1]) for m in ("temp", "hum")}
    assert _latest(db, device) == {m: (r[1], r[2]) for m, r in newest.items()}


def test_a_redelivered_batch_changes_nothing(db, storage, device):
    t0 = _now_minute() - HOUR
    batch = [_entry(device, [("t", t0 + i * 1000, float(i)) for i in range(300)])]
    storage.store(batch)
    before = (_rollup(db, "telemetry_1m", device), _rollup(db, "telemetry_1h", device), _latest(db, device))
    again = storage.store(batch)
    assert (again.readings, again.inserted) == (300, 0)
    assert (_rollup(db, "telemetry_1m", device), _rollup(db, "telemetry_1h", device), _latest(db, device)) == before


def test_slow_path_adds_only_new_rows_and_late_readings_land_in_their_bucket(db, storage, device):
    t0 = _now_minute() - 3 * HOUR
    storage.store([_entry(device, [("t", t0 + i * 10_000, 1.0) for i in range(100)])])
    newest_before = _latest(db, device)["t"]
    # Half duplicates (different values, which must be ignored), half new; some late, hours earlier.
    mixed = [("t", t0 + i * 10_000, 100.0) for i in range(50)]
    mixed += [("t", t0 - 2 * HOUR + i * 13_000, float(i)) for i in range(50)]
    mixed += [("t", t0 + 5 * 10_000, 555.0)]  # a duplicate inside the batch too
    result = storage.store([_entry(device, mixed)])
    assert (result.readings, result.inserted) == (101, 50)
    _assert_rollups_match_raw(db, device)
    assert _latest(db, device)["t"] == newest_before  # the late readings did not move latest back


def test_latest_moves_forward_across_batches_and_last_seen_follows_receive_time(db, storage, device):
    t0 = _now_minute()
    received = int(time.time() * 1000)
    storage.store([_entry(device, [("t", t0, 1.0)], received - 5000),
                   _entry(device, [("t", t0 + 1000, 2.0)], received - 4000)])
    storage.store([_entry(device, [("t", t0 - 1000, 3.0)], received - 9000)])  # late reading, older receive
    assert _latest(db, device) == {"t": (t0 + 1000, 2.0)}
    with db.cursor() as cur:
        cur.execute("SELECT (extract(epoch FROM last_seen_at) * 1000)::bigint FROM devices WHERE id = %s",
                    (device,))
        assert cur.fetchone()[0] == received - 4000


def test_without_rollups_only_raw_rows_are_written(db, postgres, base_env, device):
    conn = psycopg2.connect(postgres.url)
    try:
        plain = TelemetryStorage(conn, rollups=False)
        entry = Entry("1-0", device, [["t", _now_minute(), 1.0]], int(time.time() * 1000))
        plain.store([encode_entry(entry, -10**9, 10**9)])
    finally:
        conn.close()
    assert len(_from_raw(db, device, "1 minute")) == 1
    assert _rollup(db, "telemetry_1m", device) == [] and _latest(db, device) == {}
