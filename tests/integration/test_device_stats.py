"""GET /api/devices/{id}/stats against the real pipeline: the ingestor binary (HTTP, ThingsBoard's HTTP API
and MQTT), the registry, a Celery worker and beat, real Redis and Postgres. Known good and bad readings go
in; every counter of the answer is checked, a worker's redelivery must not count `stored` twice, and an
unknown device is a 404."""
from __future__ import annotations

import time
import uuid

import psycopg2
import pytest
import redis
import requests

from stack.servers import free_port
from stack.services import INGESTOR_BINARY, Process
from tests.conftest import Aggregator, _web, poll
from tests.integration.api import ADMIN, READER, create_device
from tests.integration.test_mqtt import V5, V311, Device


class Stack:
    """Registry, ingestor (HTTP and MQTT) and aggregator on a Redis database of their own (token index,
    stream, counters, broker), so no other module's devices share their counters."""

    def __init__(self, redis_server, base_env, run_dir):
        self.redis_url = redis_server.url.rsplit("/", 1)[0] + f"/{15}"
        self.redis = redis.Redis.from_url(self.redis_url, decode_responses=True)
        self.redis.flushdb()
        self.env = {**base_env, "REDIS_URL": self.redis_url}
        self.run_dir = run_dir
        self.procs: list[Process] = []
        self.registry_proc, self.registry = _web("registry", self.env, run_dir)
        self.procs.append(self.registry_proc)
        self.http_port, self.mqtt_port = free_port(), free_port()
        self.ingestor = self._ingestor("stats", self.http_port, VT_MQTT_ADDR=f"127.0.0.1:{self.mqtt_port}",
                                       VT_MAX_BODY_BYTES="4096")
        self.aggregator = Aggregator(self.env, run_dir, VT_CLAIM_IDLE_MS="300").start()

    def _ingestor(self, tag: str, port: int, **env: str) -> Process:
        proc = Process(f"ingestor-{tag}-{uuid.uuid4().hex[:6]}", "ingestor",
                       {**self.env, "VT_LISTEN_ADDR": f"127.0.0.1:{port}", "VT_WORKER_THREADS": "2", **env},
                       self.run_dir / "logs" / f"ingestor-{tag}.log").start(self.run_dir)
        self.procs.append(proc)
        proc.wait_http(port)
        return proc

    def stop(self) -> None:
        self.aggregator.stop()
        for proc in reversed(self.procs):
            proc.stop()


@pytest.fixture(scope="module")
def stack(redis_server, base_env, run_dir):
    if not INGESTOR_BINARY.exists():
        pytest.skip(f"ingestor binary not built ({INGESTOR_BINARY}); run `make ingestor-build`")
    s = Stack(redis_server, base_env, run_dir)
    yield s
    s.stop()


def _stats(registry: str, device_id: int, headers=READER) -> requests.Response:
    return requests.get(f"{registry}/api/devices/{device_id}/stats", headers=headers, timeout=10)


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def test_every_counter_follows_what_the_device_sent(stack):
    device = create_device(stack.registry, "stats")
    token, device_id = device["token"], device["id"]
    bearer = {"Authorization": f"Bearer {token}"}
    ingest = f"http://127.0.0.1:{stack.http_port}/api/ingest"
    now = int(time.time() * 1000)
    t1, t_tb, t_mqtt = now - 10_000, now - 7_000, now - 5_000
    sent_from = time.time()

    def post(body, headers=None, **kw):
        return requests.post(ingest, data=body, headers={"Content-Type": "application/json", **bearer,
                                                         **(headers or {})}, timeout=10, **kw)

    good = f'{{"t": 1, "h": 2, "ts": {t1}}}'
    statuses = [
        post(good).status_code,  # 202, 2 readings
        requests.post(f"http://127.0.0.1:{stack.http_port}/api/v1/{token}/telemetry",
                      data=f'{{"ts": {t_tb}, "values": {{"p": 3}}}}', timeout=10).status_code,  # 200, 1 reading
        post("{").status_code,  # malformed_json
        post('{"9t": 1}').status_code,  # invalid_metric_name
        post(f'{{"t": 1, "ts": {now + 3_600_000}}}').status_code,  # ts_in_future
        post(good, headers={"Content-Type": "text/plain"}).status_code,  # unsupported_media_type
        post('{"t": "' + "x" * 5000 + '"}').status_code,  # payload_too_large
        post(good).status_code,  # 202 again: the same readings, stored once
    ]
    assert statuses == [202, 200, 400, 400, 400, 415, 413, 202]
    # A token no device has is nobody's: counted nowhere.
    assert requests.post(ingest, data=good, headers={"Content-Type": "application/json",
                                                     "Authorization": "Bearer vtd_nobody"}).status_code == 401

    for protocol in (V311, V5):
        mqtt = Device(stack.mqtt_port, token, protocol).connect()
        try:
            if protocol == V5:  # one good PUBLISH, one reading
                assert mqtt.ack(mqtt.publish({"ts": t_mqtt, "values": {"m": 4}})) == 0
                assert mqtt.ack(mqtt.publish(b"not json")) == 0x99  # malformed_json
            else:
                assert mqtt.ack(mqtt.publish({"t": 1}, topic="v1/devices/me/attributes")) == 0  # topic
        finally:
            mqtt.close()

    # A second ingestor whose stream is over its high-water mark: the device is refused there, 503.
    full_port = free_port()
    stack.redis.xadd("vt:stats-full", {"x": "1"})
    stack.redis.xadd("vt:stats-full", {"x": "2"})
    full = stack._ingestor("full", full_port, VT_STREAM_KEY="vt:stats-full", VT_STREAM_HIGH_WATER="1")
    time.sleep(0.6)  # its backlog sampled
    refused = requests.post(f"http://127.0.0.1:{full_port}/api/ingest", data=good,
                            headers={"Content-Type": "application/json", **bearer}, timeout=10)
    assert refused.status_code == 503, refused.text
    sent_to = time.time()

    expected_messages = {"received": 12, "accepted": 4, "rejected": {
        "invalid_metric_name": 1, "malformed_json": 2, "payload_too_large": 1, "topic": 1, "ts_in_future": 1,
        "unavailable": 1, "unsupported_media_type": 1}}
    expected_readings = {"accepted": 6, "stored": 4}

    def settled():
        body = _stats(stack.registry, device_id).json()
        period = body["since_registration"]
        done = period["messages"] == expected_messages and period["readings"] == expected_readings
        return body if done else None

    try:
        body = poll(settled, timeout=20, what="the counters to settle")
    except AssertionError:
        pytest.fail(f"counters never settled: {_stats(stack.registry, device_id).json()}")
    assert body["device_id"] == device_id
    assert body["since_registration"]["from"] == device["created_at"]
    hour = body["last_hour"]
    assert (hour["messages"], hour["readings"]) == (expected_messages, expected_readings)
    as_of = time.mktime(time.strptime(body["as_of"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    window = time.mktime(time.strptime(hour["from"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert 55 * 60 < as_of - window <= 60 * 60 and hour["from"].endswith(":00.000Z")
    assert int(hour["from"][14:16]) % 5 == 0
    assert body["newest_reading_ts"] == _iso(t_mqtt)
    last = body["last_accepted_at"]
    assert _iso(int(sent_from * 1000) - 5) <= last <= _iso(int(sent_to * 1000) + 5)
    # Stored comes from the aggregator, in the batches' transactions: the table agrees.
    with psycopg2.connect(stack.env["DATABASE_URL"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT sum(stored) FROM device_stats WHERE device_id = %s", (device_id,))
        assert cur.fetchone()[0] == 4
        cur.execute("SELECT count(*) FROM telemetry WHERE device_id = %s", (device_id,))
        assert cur.fetchone()[0] == 4
    full.stop()


def test_a_device_that_sent_nothing_has_zeros_and_nulls(stack):
    device = create_device(stack.registry, "quiet")
    resp = _stats(stack.registry, device["id"])
    assert resp.status_code == 200, resp.text
    body = resp.json()
    zero = {"messages": {"received": 0, "accepted": 0, "rejected": {}}, "readings": {"accepted": 0, "stored": 0}}
    for period in ("last_hour", "since_registration"):
        assert {k: v for k, v in body[period].items() if k != "from"} == zero
    assert body["last_accepted_at"] is None and body["newest_reading_ts"] is None


def test_an_unknown_device_is_404_and_the_token_is_checked_first(stack):
    resp = _stats(stack.registry, 9_000_000_001, headers=ADMIN)
    assert resp.status_code == 404
    assert resp.json() == {"error": "not_found", "message": "device 9000000001 does not exist", "details": []}
    assert _stats(stack.registry, 1, headers={}).status_code == 401
    assert _stats(stack.registry, 0, headers=ADMIN).status_code == 404  # not an id


def test_a_worker_redelivery_does_not_count_stored_twice(stack, base_env, redis_server, run_dir):
    """A consumer stores a batch, commits and dies before its XACK: a worker started afterwards claims the
    entry, stores it again (all duplicates) and acks it. `stored` rides on the batch's transaction: counted
    once. On a Redis database of its own, so that no other worker takes the entry first."""
    from aggregator.consumer import StreamConsumer
    from aggregator.copy_encoding import encode_entry
    from aggregator.storage import TelemetryStorage
    from visiontrack.stream import Entry

    device = create_device(stack.registry, "redelivered")
    now = int(time.time() * 1000)
    readings = [["t", now - 3000 + i, float(i)] for i in range(5)]
    url = redis_server.url.rsplit("/", 1)[0] + "/14"
    client = redis.Redis.from_url(url)
    client.flushdb()
    key, group = "vt:telemetry", "aggregators"
    dying = StreamConsumer(client, key, group, "dying-consumer", f"{key}:dead", claim_idle_ms=300, max_deliveries=5)
    dying.ensure_group()
    entry_id = client.xadd(key, {"v": "1", "d": str(device["id"]), "at": str(now),
                                 "r": "[" + ",".join(f'["{m}",{ts},{v}]' for m, ts, v in readings) + "]"}).decode()
    assert [r[0] for r in dying.read(10, ">")] == [entry_id]
    conn = psycopg2.connect(stack.env["DATABASE_URL"])
    try:
        stored = TelemetryStorage(conn).store([encode_entry(Entry(entry_id, device["id"], readings, now),
                                                            -10**9, 10**9)])
        assert stored.inserted == 5  # committed, never acked
    finally:
        conn.close()
    assert client.xpending(key, group)["pending"] == 1

    worker = Aggregator({**base_env, "REDIS_URL": url}, run_dir, VT_CLAIM_IDLE_MS="300").start()
    try:
        poll(lambda: client.xpending(key, group)["pending"] == 0, timeout=30, what="the worker to claim and ack it")
    finally:
        worker.stop()
    body = _stats(stack.registry, device["id"]).json()
    assert body["since_registration"]["readings"]["stored"] == 5
    assert body["last_hour"]["readings"]["stored"] == 5
    with psycopg2.connect(stack.env["DATABASE_URL"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM telemetry WHERE device_id = %s", (device["id"],))
        assert cur.fetchone()[0] == 5


@pytest.mark.parametrize("rollups", [True, False], ids=["rollups", "no-rollups"])
def test_stored_counts_only_the_rows_really_inserted_on_both_paths(postgres, db, base_env, rollups):
    """The fast path (COPY, every row new) and the slow path (duplicates dropped), with rollups (counted from
    the staged partials) and without (counted in Python, or from what the INSERT returned)."""
    from aggregator.copy_encoding import encode_entry
    from aggregator.storage import TelemetryStorage
    from visiontrack.stream import Entry

    first, second = (8_800_000_000 + uuid.uuid4().int % 1_000_000 for _ in range(2))
    now = int(time.time() * 1000)

    def entry(device: int, *offsets: int) -> object:
        return encode_entry(Entry(f"{device}-{offsets[0]}", device, [["t", now - o, 1.0] for o in offsets], now),
                            -10**9, 10**9)

    def stored() -> dict[int, int]:
        with db.cursor() as cur:
            cur.execute("SELECT device_id, sum(stored)::int FROM device_stats WHERE device_id IN (%s, %s) "
                        "GROUP BY 1", (first, second))
            return dict(cur.fetchall())

    conn = psycopg2.connect(postgres.url)
    try:
        storage = TelemetryStorage(conn, rollups=rollups)
        assert storage.store([entry(first, 1, 2, 3), entry(second, 1)]).inserted == 4  # fast path
        assert stored() == {first: 3, second: 1}
        # Slow path: two of first's readings and second's one again, one new reading of each.
        assert storage.store([entry(first, 2, 3, 4), entry(second, 1, 5)]).inserted == 2
        assert stored() == {first: 4, second: 2}
        assert storage.store([entry(first, 1, 2, 3, 4), entry(second, 1, 5)]).inserted == 0  # a redelivery
        assert stored() == {first: 4, second: 2}
    finally:
        conn.close()
        with db.cursor() as cur:
            for table in ("device_stats", "telemetry", "telemetry_1m", "telemetry_1h", "telemetry_latest"):
                cur.execute(f"DELETE FROM {table} WHERE device_id IN (%s, %s)", (first, second))
