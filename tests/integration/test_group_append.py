"""Group append against the real ingestor, Redis and aggregator: requests that arrive together share a
stream entry (format 2), each is answered only once its entry is in, and every reading is stored once."""
from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import poll
from tests.integration.test_mqtt import V5, V311, Device, Ingestor
from visiontrack.stream import decode_entry

MOST = 4  # VT_STREAM_ENTRY_MAX_REQUESTS of the ingestor under test: small, so the cap shows
DEVICES = range(8_100_001, 8_100_009)


@pytest.fixture(scope="module")
def ingestor(redis_server, base_env, run_dir):
    server = Ingestor(redis_server, base_env, run_dir, VT_STREAM_ENTRY_MAX_REQUESTS=str(MOST),
                      VT_RATE_LIMIT="0").start()
    yield server
    server.stop()


def _requests_in_stream(server) -> list:
    """Every request the stream holds, as (entry id, part, device, readings)."""
    return [(entry_id, entry.part, entry.device_id, entry.readings)
            for entry_id, fields in server.redis.xrange(server.stream, "-", "+")
            for entry in decode_entry(entry_id, fields)]


def test_concurrent_requests_share_entries_and_each_is_in_exactly_one(ingestor):
    tokens = {device: ingestor.device(device) for device in DEVICES}
    now = int(time.time() * 1000)
    url = f"http://127.0.0.1:{ingestor.http_port}/api/ingest"
    sent = [(device, now - 10_000 + i) for i in range(50) for device in DEVICES]  # 400 requests

    def post(item):
        device, ts = item
        with requests.Session() as s:
            return s.post(url, json={"ts": ts, "values": {"t": ts % 1000}},
                          headers={"Authorization": f"Bearer {tokens[device]}"}, timeout=10).status_code

    # Redis holds writes for the first half second: the lanes' first XADDs wait, the requests behind them
    # queue up, so entries are shared however fast this machine is.
    ingestor.redis.execute_command("CLIENT", "PAUSE", "500", "WRITE")
    with ThreadPoolExecutor(32) as pool:
        assert set(pool.map(post, sent)) == {202}
    stored = _requests_in_stream(ingestor)
    assert sorted((device, readings[0][1]) for _, _, device, readings in stored) == sorted(sent)
    entries = {entry_id for entry_id, *_ in stored}
    parts = {entry_id: sum(1 for e, *_ in stored if e == entry_id) for entry_id in entries}
    assert max(parts.values()) <= MOST, f"an entry holds {max(parts.values())} requests, more than {MOST}"
    assert len(entries) < len(sent), "32 clients at once, yet every request had an entry of its own"
    metrics = ingestor.metrics()
    assert "visiontrack_ingestor_stream_entry_requests_count" in metrics


def test_mqtt_publishes_of_many_connections_share_entries(ingestor):
    devices = list(range(8_100_101, 8_100_121))
    clients = [Device(ingestor.mqtt_port, ingestor.device(d), V5 if d % 2 else V311).connect() for d in devices]
    before = {entry_id for entry_id, *_ in _requests_in_stream(ingestor)}
    now = int(time.time() * 1000)
    try:
        for i in range(20):  # a message on every connection at once, 20 times
            mids = [(c, c.publish({"ts": now - 5_000 + i, "values": {"m": i}})) for c in clients]
            assert [c.ack(mid) for c, mid in mids] == [0] * len(clients)
    finally:
        for c in clients:
            c.close()
    new = [r for r in _requests_in_stream(ingestor) if r[0] not in before]
    got = sorted((device, reading[1]) for _, _, device, readings in new for reading in readings)
    assert got == sorted((d, now - 5_000 + i) for d in devices for i in range(20))
    assert len({entry_id for entry_id, *_ in new}) < len(got), "20 connections at once, yet no entry was shared"


def test_a_stream_of_both_formats_is_stored_exactly_once(ingestor, base_env, db, run_dir):
    from tests.conftest import Aggregator

    device = 8_100_200
    token = ingestor.device(device)
    now = int(time.time() * 1000)
    url = f"http://127.0.0.1:{ingestor.http_port}/api/ingest"
    with requests.Session() as s:  # one at a time: format 1
        for i in range(5):
            assert s.post(url, json={"ts": now - 2000 + i, "values": {"a": i}},
                          headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code == 202

    def post(i):
        with requests.Session() as s:
            return s.post(url, json={"ts": now - 1000 + i, "values": {"a": i}},
                          headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code

    with ThreadPoolExecutor(16) as pool:  # together: format 2 as well
        assert set(pool.map(post, range(200))) == {202}
    formats = {ingestor.redis.xrange(ingestor.stream, entry_id, entry_id)[0][1]["v"]
               for entry_id, _, d, _ in _requests_in_stream(ingestor) if d == device}
    assert formats == {"1", "2"}
    env = {**base_env, "REDIS_URL": ingestor.url, "VT_STREAM_KEY": ingestor.stream,
           "VT_DEAD_LETTER_KEY": f"{ingestor.stream}:dead-{uuid.uuid4().hex[:6]}"}
    agg = Aggregator(env, run_dir).start()
    try:
        def rows():
            with db.cursor() as cur:
                cur.execute("SELECT count(*), count(DISTINCT ts) FROM telemetry WHERE device_id = %s", (device,))
                return cur.fetchone()
        poll(lambda: rows()[0] >= 205, timeout=30, what="205 readings stored")
        time.sleep(1)  # later drain rounds would show a double
        assert rows() == (205, 205)
        assert ingestor.redis.xlen(env["VT_DEAD_LETTER_KEY"]) == 0
    finally:
        agg.stop()
