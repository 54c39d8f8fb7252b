"""`GET /api/telemetry/aggregate` and `/latest` against real Postgres, with data written by the aggregator's
storage (so the rollups are the ones the pipeline makes): every answer equals the same aggregate computed
from the raw rows, for random data, intervals, zones and windows."""
from __future__ import annotations

import bisect
import itertools
import math
import random
import time
from datetime import datetime, timezone

import psycopg2
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator.copy_encoding import encode_entry
from aggregator.storage import TelemetryStorage
from query import buckets
from visiontrack.stream import Entry

from tests.integration.api import READER

MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu", "Australia/Lord_Howe",
         "America/Santiago", "Pacific/Chatham", "America/St_Johns", "America/Havana", "Atlantic/Azores"]


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def _iso(ms: int) -> str:
    dt = datetime.fromtimestamp(ms / 1000, timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


NOW = int(time.time() * 1000) // MINUTE * MINUTE
# Windows near DST changes (Berlin and New York fall back, Lord Howe's half hour) and near now.
BASES = [NOW - 3 * DAY, NOW - 2 * HOUR, _ms("2026-10-24T18:00:00+00:00"), _ms("2026-10-31T20:00:00+00:00"),
         _ms("2026-10-03T12:00:00+00:00"), _ms("2026-09-05T22:00:00+00:00")]
_device_ids = itertools.count(int(time.time()) % 1_000_000 * 1000 + 5_000_000_000)


@pytest.fixture(scope="module")
def storage(postgres, base_env):
    conn = psycopg2.connect(postgres.url)
    yield TelemetryStorage(conn)
    conn.close()


def _write(storage, device_id: int, readings: list[tuple[int, float]], metric: str = "m") -> None:
    """Shuffled into entries of random sizes and stored in a few batches, then one batch again (a
    redelivery), as the pipeline would see them: late readings, minutes spread over entries, duplicates."""
    rnd = random.Random(device_id)
    readings = readings[:]
    rnd.shuffle(readings)
    entries, i = [], 0
    while i < len(readings):
        size = rnd.randrange(1, 80)
        entries.append(encode_entry(Entry(f"{i}-0", device_id, [[metric, ts, v] for ts, v in readings[i:i + size]],
                                          NOW), -10**9, 10**9))
        i += size
    batches = [entries[k::3] for k in range(3)]
    for batch in batches + [rnd.choice(batches)]:
        if batch:
            storage.store(batch)


def _raw(db, device_id: int, metric: str = "m") -> list[tuple[int, float]]:
    with db.cursor() as cur:
        cur.execute("SELECT (extract(epoch FROM ts) * 1000)::bigint, value FROM telemetry "
                    "WHERE device_id = %s AND metric = %s", (device_id, metric))
        return cur.fetchall()


def _expected(rows, zone: str, interval: int, frm: int, to: int) -> list[dict]:
    starts = buckets.bucket_starts(buckets.Zone(zone), interval, frm, to)
    groups: dict[int, list[float]] = {}
    for ts, value in rows:
        if frm <= ts < to:
            groups.setdefault(bisect.bisect_right(starts, ts) - 1, []).append(value)
    return [{"ts": _iso(starts[i]), "count": len(v), "min": min(v), "max": max(v), "sum": math.fsum(v),
             "avg": math.fsum(v) / len(v)} for i, v in sorted(groups.items())]


def _get(query_url, **params) -> requests.Response:
    return requests.get(f"{query_url}/api/telemetry/aggregate", params=params, headers=READER, timeout=10)


def _assert_same(got: list[dict], want: list[dict]) -> None:
    assert [(g["ts"], g["count"], g["min"], g["max"]) for g in got] == \
           [(w["ts"], w["count"], w["min"], w["max"]) for w in want]
    for g, w in zip(got, want):
        assert g["sum"] == pytest.approx(w["sum"], rel=1e-9, abs=1e-6)
        assert g["avg"] == pytest.approx(w["avg"], rel=1e-9, abs=1e-6)


@st.composite
def cases(draw):
    """Zone, interval, base and shape from hypothesis; the bulk of the data and the window from a seeded
    Random, so every example is spread over the whole range instead of shrinking towards tiny ones."""
    base = draw(st.sampled_from(BASES))
    span = draw(st.sampled_from([2 * HOUR, 26 * HOUR, 3 * DAY]))
    interval = draw(st.sampled_from(list(buckets.INTERVALS)))
    zone = draw(st.sampled_from(ZONES))
    rnd = random.Random(draw(st.integers(0, 2**32)))
    n = rnd.randrange(1, 600)
    offsets = {rnd.randrange(0, span) for _ in range(n)}
    if draw(st.booleans()):  # readings on whole minutes and hours too, where boundaries are
        offsets |= {rnd.randrange(0, span // MINUTE) * MINUTE for _ in range(n // 4)}
        offsets |= {rnd.randrange(0, span // HOUR) * HOUR - 1 for _ in range(4)}
    special = draw(st.lists(st.floats(-1e6, 1e6, allow_nan=False), max_size=5))
    readings = [(base + o, special[i] if i < len(special) else
                 rnd.choice([rnd.uniform(-100, 100), float(rnd.randrange(-5, 5))]))
                for i, o in enumerate(sorted(offsets))]
    a, b = sorted(rnd.randrange(-2 * HOUR, span + 2 * HOUR) for _ in range(2))
    b += 1
    if draw(st.booleans()):  # windows on whole minutes sometimes, ragged (to the millisecond) otherwise
        a, b = a // MINUTE * MINUTE, b // MINUTE * MINUTE + MINUTE
    return readings, interval, zone, base + a, base + b


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(case=cases())
def test_aggregates_equal_the_raw_rows(db, storage, query_url, case):
    readings, interval, zone, frm, to = case
    device_id = next(_device_ids)
    _write(storage, device_id, readings)
    resp = _get(query_url, device_id=device_id, metric="m", interval=interval, tz=zone, **{"from": frm, "to": to})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["device_id"], body["metric"], body["interval"], body["tz"]) == (device_id, "m", interval, zone)
    _assert_same(body["items"], _expected(_raw(db, device_id), zone, buckets.INTERVALS[interval], frm, to))


def test_the_rollups_answer_most_of_a_long_window(db, storage, query_url):
    """The same answers, and the plan reads rollups for whole minutes and hours (not raw rows)."""
    device_id = next(_device_ids)
    base = NOW - 3 * DAY
    rnd = random.Random(7)
    _write(storage, device_id, [(base + i * 17_000 + rnd.randrange(1000), rnd.uniform(0, 50)) for i in range(12000)])
    frm, to = base + 12_345, base + 2 * DAY + 54_321
    p = buckets.plan(buckets.Zone("Europe/Berlin"), DAY, frm, to)
    assert sum(hi - lo for lo, hi in p.ranges["raw"]) < 2 * MINUTE
    assert sum(hi - lo for lo, hi in p.ranges["1h"]) > 2 * DAY - 2 * HOUR
    for interval in ("1m", "15m", "1h", "1d"):
        resp = _get(query_url, device_id=device_id, metric="m", interval=interval, tz="Europe/Berlin",
                    **{"from": frm, "to": to})
        assert resp.status_code == 200
        _assert_same(resp.json()["items"],
                     _expected(_raw(db, device_id), "Europe/Berlin", buckets.INTERVALS[interval], frm, to))


def test_day_buckets_follow_local_midnight_across_dst(storage, query_url):
    device_id = next(_device_ids)
    # Europe/Berlin falls back on 2026-10-25: that day has 25 hours.
    readings = [(_ms("2026-10-24T21:59:59.999+00:00"), 1.0), (_ms("2026-10-24T22:00:00+00:00"), 2.0),
                (_ms("2026-10-25T22:59:59+00:00"), 3.0), (_ms("2026-10-25T23:00:00+00:00"), 4.0)]
    _write(storage, device_id, readings)
    resp = _get(query_url, device_id=device_id, metric="m", interval="1d", tz="Europe/Berlin", agg="count,sum",
                **{"from": "2026-10-24T00:00:00Z", "to": "2026-10-27T00:00:00Z"})
    assert resp.json()["items"] == [
        {"ts": "2026-10-23T22:00:00.000Z", "count": 1, "sum": 1.0},
        {"ts": "2026-10-24T22:00:00.000Z", "count": 2, "sum": 5.0},
        {"ts": "2026-10-25T23:00:00.000Z", "count": 1, "sum": 4.0},
    ]


@pytest.mark.parametrize("params,field", [
    ({"interval": "2m"}, "interval"), ({"agg": "avg,median"}, "agg"), ({"tz": "Mars/Olympus"}, "tz"),
    ({"tz": "../../etc/passwd"}, "tz"), ({"from": "yesterday"}, "from"), ({"device_id": "x"}, "device_id"),
    ({"from": "2026-11-02T00:00:00Z", "to": "2026-11-01T00:00:00Z"}, "to"),
    ({"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "interval"),
    ({"metric": None}, "metric"), ({"from": "1969-12-31T00:00:00Z", "interval": "1d"}, "from"),
    ({"from": "0001-01-01T00:00:00Z", "to": "0001-01-02T00:00:00Z", "tz": "Europe/Berlin"}, "from"),
])
def test_bad_parameters_name_the_field(query_url, params, field):
    base = {"device_id": 1, "metric": "m", "interval": "1m"}
    query = {k: v for k, v in {**base, **params}.items() if v is not None}
    resp = _get(query_url, **query)
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert body["error"] == "validation_error" and [d["field"] for d in body["details"]] == [field]


def test_latest_gives_the_newest_reading_per_metric(storage, query_url, db):
    with db.cursor() as cur:
        cur.execute("INSERT INTO devices (name) VALUES (%s) RETURNING id", (f"latest-{next(_device_ids)}",))
        device_id = cur.fetchone()[0]
    url = f"{query_url}/api/telemetry/latest"
    assert requests.get(url, params={"device_id": device_id}, headers=READER).json() == \
        {"device_id": device_id, "values": {}}
    _write(storage, device_id, [(NOW - 5000, 1.0), (NOW - 1000, 2.0), (NOW - 3000, 3.0)], metric="t")
    _write(storage, device_id, [(NOW - 9000, 7.5)], metric="h")
    _write(storage, device_id, [(NOW - 2000, 9.0)], metric="t")  # late: latest stays
    got = requests.get(url, params={"device_id": device_id}, headers=READER).json()
    assert got == {"device_id": device_id, "values": {"h": {"ts": _iso(NOW - 9000), "value": 7.5},
                                                      "t": {"ts": _iso(NOW - 1000), "value": 2.0}}}
    one = requests.get(url, params={"device_id": device_id, "metric": "h"}, headers=READER).json()
    assert one == {"device_id": device_id, "values": {"h": {"ts": _iso(NOW - 9000), "value": 7.5}}}
    missing = requests.get(url, params={"device_id": 987654321}, headers=READER)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert requests.get(url, headers=READER).json()["details"][0]["field"] == "device_id"
    assert requests.get(url, params={"device_id": device_id}).status_code == 401


@pytest.mark.parametrize("path", ["/api/telemetry/", "/api/telemetry/aggregate", "/api/telemetry/latest",
                                  "/api/alerts/"])
def test_reads_check_the_token_before_the_parameters(query_url, path):
    """An unauthenticated caller learns nothing about the parameters, and a reader token is let through."""
    bad = {"device_id": "x", "limit": "-1", "interval": "7q"}
    anonymous = requests.get(f"{query_url}{path}", params=bad)
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "unauthorized"
    assert requests.get(f"{query_url}{path}", params=bad, headers=READER).status_code == 400


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_raw_pages_of_one_series_cover_the_range_exactly(storage, query_url, order):
    """The one-series raw read (a prepared statement with a generic plan): pages of any range and order,
    across a day boundary, give exactly the rows in the range, each once."""
    device_id = next(_device_ids)
    rows = [(NOW - 2 * DAY + k * 997_003, float(k)) for k in range(180)]
    _write(storage, device_id, rows, metric="p")
    _write(storage, device_id, [(ts, -v) for ts, v in rows[::3]], metric="q")  # another series of the device
    rnd = random.Random(device_id)
    for _ in range(4):
        frm, to = sorted(rnd.sample([ts for ts, _ in rows], 2))
        got, cursor = [], None
        while True:
            params = {"device_id": device_id, "metric": "p", "from": frm, "to": to, "order": order,
                      "limit": rnd.randrange(1, 40), **({"cursor": cursor} if cursor else {})}
            page = requests.get(f"{query_url}/api/telemetry/", params=params, headers=READER).json()
            got += [(_ms(item["ts"]), item["value"]) for item in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        want = sorted(((ts, v) for ts, v in rows if frm <= ts < to), reverse=order == "desc")
        assert got == want
