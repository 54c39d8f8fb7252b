"""The sharded stream (VT_STREAM_SHARDS=3) end to end, over real HTTP and real Celery.

The sharded path is proven locally with N > 1 (docs/design.md, "Growing past one machine"). Here the
Python side runs sharded: a query
service of its own writes `POST /api/telemetry/` into `<key>:{device_id % 3}` (docs/contracts.md section 1),
and an aggregator worker and beat of their own drain the three shards into Postgres, trim them and
dead-letter what can never be stored.

Nothing here can disturb the session's other tests, nor be disturbed by them: the module has its own
Postgres database (migrated like the real one), its own Redis database (stream and Celery broker) and its
own stream and dead-letter keys.
"""
from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import pytest
import redis
import requests

from tests.conftest import ADMIN_TOKEN, Aggregator, _web, poll
from tests.integration.conftest import own_database

SHARDS = 3
GROUP = "aggregators"
REDIS_DB = 15  # test_delivery's throwaway databases are 1..14; the session's services use 0
DEVICES = 12  # consecutive ids: every residue mod 3, four devices each
REQUESTS_PER_DEVICE = 3
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def env(postgres, redis_server, base_env, run_dir):
    """A Postgres database, a Redis database and stream keys of this module's own, and the env naming them."""
    tag = uuid.uuid4().hex[:8]
    redis_url = redis_server.url.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    key = f"vt:sharded:{tag}"
    with own_database(postgres, base_env, run_dir, "vt_sharded") as db_url:
        module_env = {**base_env, "DATABASE_URL": db_url, "REDIS_URL": redis_url, "VT_STREAM_KEY": key,
                      "VT_STREAM_SHARDS": str(SHARDS), "VT_STREAM_GROUP": GROUP, "VT_DEAD_LETTER_KEY": f"{key}:dead",
                      "VT_BEAT_SCHEDULE_FILE": str(run_dir / f"beat-sharded-{tag}")}
        conn = psycopg2.connect(db_url)
        conn.autocommit = True
        yield {"env": module_env, "db": conn, "redis": client, "key": key, "dead": f"{key}:dead",
               "shards": [f"{key}:{{{i}}}" for i in range(SHARDS)]}
        conn.close()
    client.flushdb()
    client.close()


@pytest.fixture(scope="module")
def query(env, run_dir):
    proc, url = _web("query", env["env"], run_dir)
    yield url
    proc.stop()


@pytest.fixture(scope="module")
def posted(env, query):
    """Readings of many devices posted through the query service before any aggregator runs: what each
    shard held then, and every (device, metric, ts, value) the requests carried."""
    with env["db"].cursor() as cur:
        cur.execute("INSERT INTO devices (name) SELECT 'sharded-' || g || '-' || %s FROM generate_series(1, %s) g "
                    "RETURNING id", (uuid.uuid4().hex[:6], DEVICES))
        devices = sorted(r[0] for r in cur.fetchall())
    assert {d % SHARDS for d in devices} == set(range(SHARDS))
    start = int(time.time() * 1000) - 20 * 60_000
    bodies, expected = [], set()
    for d in devices:
        for n in range(REQUESTS_PER_DEVICE):
            body = []
            for k in range(4):
                ts = start + n * 1000 + k * 10
                temperature = d * 1000 + n * 10 + k + 0.25
                body.append({"device_id": d, "ts": ts, "values": {"temperature": temperature, "door": k % 2 == 1}})
                expected |= {(d, "temperature", ts, temperature), (d, "door", ts, float(k % 2))}
            bodies.append(body)
    bodies.append(bodies[4])  # a device resends a request: its readings must still be stored once

    def post(body):
        return requests.post(f"{query}/api/telemetry/", json=body, headers=ADMIN, timeout=10)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, bodies))
    assert [(a.status_code, a.json()) for a in answers] == [(202, {"accepted": 8})] * len(bodies)
    client = env["redis"]
    snapshot = {key: client.xrange(key) for key in client.scan_iter(match=f"{env['key']}*")}
    return {"devices": devices, "expected": expected, "requests": len(bodies), "snapshot": snapshot}


@pytest.fixture(scope="module")
def aggregator(env, posted, run_dir):
    agg = Aggregator(env["env"], run_dir, VT_WORKER_CONCURRENCY="2").start()
    yield agg
    agg.stop()


def _stored(env, devices) -> list[tuple]:
    with env["db"].cursor() as cur:
        cur.execute("SELECT device_id, metric, (extract(epoch FROM ts) * 1000)::bigint, value FROM telemetry "
                    "WHERE device_id = ANY(%s)", (devices,))
        return cur.fetchall()


def _group(env, key: str, group: str = GROUP) -> dict:
    found = [g for g in env["redis"].xinfo_groups(key) if g["name"] == group]
    assert found, f"no consumer group {group} on {key}"
    return found[0]


@pytest.fixture(scope="module")
def drained(env, posted, aggregator):
    want = len(posted["expected"])
    try:
        poll(lambda: len(_stored(env, posted["devices"])) >= want, timeout=25, interval=0.2,
             what=f"{want} readings in Postgres from all {SHARDS} shards")
    except AssertionError:
        stored = {d % SHARDS: 0 for d in posted["devices"]}
        for d, *_ in _stored(env, posted["devices"]):
            stored[d % SHARDS] += 1
        raise AssertionError(f"readings stored per shard {stored}, {want} posted; entries left per shard "
                             f"{ {k: env['redis'].xlen(k) for k in env['shards']} }") from None
    return posted


def test_posted_readings_land_in_the_shard_of_their_device(env, posted):
    snapshot = posted["snapshot"]
    assert sorted(snapshot) == env["shards"]  # the three shard keys, no plain key, nothing else
    for i, key in enumerate(env["shards"]):
        entries = snapshot[key]
        assert entries, f"shard {key} got nothing"
        assert {int(fields["d"]) % SHARDS for _, fields in entries} == {i}
        assert all(fields["v"] == "1" and json.loads(fields["r"]) for _, fields in entries)
    assert {int(f["d"]) for entries in snapshot.values() for _, f in entries} == set(posted["devices"])
    assert sum(len(entries) for entries in snapshot.values()) == posted["requests"]  # one entry per request


def test_every_reading_is_stored_exactly_once_with_its_value(env, drained):
    time.sleep(1.5)  # a few more drain rounds: anything stored twice or stray would show now
    rows = _stored(env, drained["devices"])
    assert len(rows) == len(drained["expected"])
    assert {(d, m, ts, v) for d, m, ts, v in rows} == drained["expected"]


def test_every_shard_ends_with_nothing_pending_and_is_trimmed(env, drained):
    for key in env["shards"]:
        poll(lambda key=key: (lambda g: g["pending"] == 0 and g["lag"] == 0)(_group(env, key)), timeout=10,
             what=f"group {GROUP} on {key} to have read and acked everything")
        # Everything is acknowledged, so the trim (every second here) leaves nothing behind.
        poll(lambda key=key: env["redis"].xlen(key) == 0, timeout=10, what=f"{key} to be trimmed empty")


def test_a_shard_is_trimmed_only_below_the_oldest_entry_a_group_has_not_acked(env, drained, query):
    client = env["redis"]
    device = next(d for d in drained["devices"] if d % SHARDS == 1)
    key, witness = env["shards"][1], env["shards"][0]
    poll(lambda: client.xlen(key) == 0, timeout=10, what=f"{key} drained and trimmed before the laggard joins")
    client.xgroup_create(key, "laggard", id="$")  # a second group that has not read what comes next
    try:
        ts = int(time.time() * 1000) - 60_000
        for n in range(6):
            requests.post(f"{query}/api/telemetry/", json={"device_id": device, "ts": ts + n, "values": {"lag": n}},
                          headers=ADMIN, timeout=10).raise_for_status()
        ids = [i for i, _ in client.xrange(key)]
        assert len(ids) == 6
        laggard = client.xreadgroup("laggard", "slow:0", {key: ">"}, count=3)  # three delivered, unacked
        assert [i for i, _ in laggard[0][1]] == ids[:3]
        client.xack(key, "laggard", ids[0])
        poll(lambda: _group(env, key)["pending"] == 0 and _group(env, key)["lag"] == 0, timeout=10,
             what="the aggregators to ack the new entries")
        # Only the entry both groups acked may go: the shard keeps everything from the laggard's oldest pending.
        poll(lambda: [i for i, _ in client.xrange(key)] == ids[1:], timeout=10, what=f"{key} trimmed to {ids[1:]}")
        client.xadd(witness, {"v": "1", "d": str(next(d for d in drained["devices"] if d % SHARDS == 0)),
                              "r": json.dumps([["witness", ts, 1.0]]), "at": str(ts)})
        poll(lambda: client.xlen(witness) == 0, timeout=10, what="a later trim round (the witness shard emptied)")
        time.sleep(1.2)
        assert [i for i, _ in client.xrange(key)] == ids[1:]
        client.xack(key, "laggard", ids[1], ids[2])  # acked up to ids[2]; ids[3:] never delivered to it: kept
        poll(lambda: [i for i, _ in client.xrange(key)] == ids[3:], timeout=10, what=f"{key} trimmed to {ids[3:]}")
        time.sleep(1.2)
        assert [i for i, _ in client.xrange(key)] == ids[3:]
        client.xgroup_destroy(key, "laggard")
        poll(lambda: client.xlen(key) == 0, timeout=10, what=f"{key} trimmed empty once only the aggregators remain")
    finally:
        client.xgroup_destroy(key, "laggard")  # when the test failed before doing so itself
    # The aggregators stored them all along, whatever the laggard did.
    assert sorted(v for _, m, _, v in _stored(env, [device]) if m == "lag") == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_a_poison_entry_on_one_shard_is_dead_lettered(env, drained):
    client = env["redis"]
    device = next(d for d in drained["devices"] if d % SHARDS == 2)
    key = env["shards"][2]
    now = int(time.time() * 1000)
    poison = {"v": "1", "d": str(device), "r": "not json", "at": str(now)}
    poison_id = client.xadd(key, poison)
    good_id = client.xadd(key, {"v": "1", "d": str(device), "r": json.dumps([["after_poison", now - 5000, 7.5]]),
                                "at": str(now)})
    dead = poll(lambda: client.xrange(env["dead"]), timeout=10, what=f"a dead letter in {env['dead']}")
    assert len(dead) == 1
    fields = dead[0][1]
    assert fields["source"] == key and fields["source_id"] == poison_id and fields["reason"]
    assert {k: fields[k] for k in poison} == poison  # the original fields, untouched
    poll(lambda: any(m == "after_poison" and v == 7.5 for _, m, _, v in _stored(env, [device])), timeout=10,
         what=f"the entry after the poison ({good_id}) to be stored")
    poll(lambda: _group(env, key)["pending"] == 0 and client.xlen(key) == 0, timeout=10,
         what=f"{key} acked and trimmed past the poison entry")
    assert all(client.xlen(k) == 0 for k in env["shards"])
