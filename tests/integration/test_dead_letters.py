"""Dead-lettering against real Redis: an entry is acknowledged only once its dead letter was written.

XADD to the dead-letter stream and XACK of the source entry are two commands, not a transaction (the keys
may sit in different Redis Cluster slots), so a refused XADD must not be followed by the XACK: the entry
stays pending and is moved at a later try. Refusals here: the dead-letter key holding a string (WRONGTYPE),
and Redis over `maxmemory` with `noeviction` (XADD is refused, XACK is not).
"""
from __future__ import annotations

import json
import logging
import time
import uuid

import psycopg2
import pytest
import redis

from stack.servers import Redis, free_port

DEVICE_BASE = 7_100_000  # device ids of these tests: telemetry has no foreign key, so none must exist


def _entry(device_id: int, readings: list) -> dict:
    return {"v": "1", "d": str(device_id), "r": json.dumps(readings, separators=(",", ":")),
            "at": str(int(time.time() * 1000))}


def _poison(device_id: int) -> dict:
    return {"v": "1", "d": str(device_id), "r": "not json", "at": "1"}


def _count(db, device_ids) -> int:
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM telemetry WHERE device_id = ANY(%s)", (list(device_ids),))
        return cur.fetchone()[0]


def _isolated(url: str, base_env: dict):
    from visiontrack import config as config_module

    client = redis.Redis.from_url(url)
    key = f"vt:test:{uuid.uuid4().hex[:8]}"
    env = {**base_env, "REDIS_URL": url, "VT_STREAM_KEY": key, "VT_DEAD_LETTER_KEY": f"{key}:dead"}
    return client, key, config_module.load(env)


@pytest.fixture
def isolated(redis_server, base_env):
    """A stream and dead-letter key of the test's own on the session's Redis, and a config naming them."""
    client, key, cfg = _isolated(redis_server.url, base_env)
    yield client, key, cfg
    client.delete(key, cfg.dead_letter_key)
    client.close()


@pytest.fixture(scope="module")
def own_redis(run_dir):
    """A Redis of this module's own, configured like the session's (noeviction), whose maxmemory a test
    may lower without starving the other tests' Redis."""
    server = Redis(run_dir / f"redis-dl-{uuid.uuid4().hex[:6]}", free_port(), run_dir / "logs" / "redis-dl.log")
    server.start()
    yield server
    server.stop()


def _consumer(cfg, client, name: str):
    from aggregator.consumer import StreamConsumer

    consumer = StreamConsumer(client, cfg.stream_key, cfg.stream_group, name, cfg.dead_letter_key,
                              claim_idle_ms=cfg.claim_idle_ms, max_deliveries=cfg.max_deliveries)
    consumer.ensure_group()
    return consumer


def _pipeline(cfg, client, name: str):
    from aggregator.pipeline import Pipeline
    from aggregator.storage import TelemetryStorage

    return Pipeline(_consumer(cfg, client, name), TelemetryStorage(psycopg2.connect(cfg.database_url)),
                    cfg.batch_entries, cfg.retention_days, cfg.batch_readings)


def _pending(client, key: str, group: str) -> list[str]:
    return [r["message_id"].decode() for r in client.xpending_range(key, group, min="-", max="+", count=100)]


def _dead(client, cfg) -> list[tuple[str, str]]:
    return [(f[b"source"].decode(), f[b"source_id"].decode()) for _, f in client.xrange(cfg.dead_letter_key)]


def test_a_poison_entry_whose_dead_letter_is_refused_stays_pending_and_is_moved_later(isolated, db, caplog):
    client, key, cfg = isolated
    device = DEVICE_BASE + 1
    good = client.xadd(key, _entry(device, [["t", int(time.time() * 1000) - 1000, 1.0]])).decode()
    poison = client.xadd(key, _poison(device)).decode()
    client.set(cfg.dead_letter_key, "not a stream")  # every XADD to it: WRONGTYPE
    pipe = _pipeline(cfg, client, "dl:0")
    with caplog.at_level(logging.WARNING, logger="aggregator.consumer"):
        pipe.process(pipe.consumer.read(100, ">"))  # the refusal is logged, not raised
    assert _count(db, [device]) == 1
    assert _pending(client, key, cfg.stream_group) == [poison]  # not acknowledged, so not lost
    assert good not in _pending(client, key, cfg.stream_group)  # the stored one is
    assert client.type(cfg.dead_letter_key) == b"string"
    assert any(poison in r.getMessage() and "WRONGTYPE" in r.getMessage() for r in caplog.records)

    client.delete(cfg.dead_letter_key)  # the dead-letter stream can be written again: the next try moves it
    time.sleep(0.2)
    pipe.consumer.claim_idle_ms = 100  # claimed again once idle this long
    assert pipe.drain(5).more is False
    assert _dead(client, cfg) == [(key, poison)]
    assert _pending(client, key, cfg.stream_group) == []
    assert _count(db, [device]) == 1


def test_a_poison_suspect_whose_dead_letter_is_refused_is_claimed_again_later(isolated, db):
    """The claim path: an entry delivered too often whose dead letter cannot be written yet stays pending,
    and the next claim moves it."""
    client, key, cfg = isolated
    device = DEVICE_BASE + 2
    suspect = client.xadd(key, _entry(device, [["t", int(time.time() * 1000) - 1000, 1.0]])).decode()
    cfg = cfg.replace(claim_idle_ms=100, max_deliveries=1)
    gone = _consumer(cfg, client, "gone:0")
    gone.read(10, ">")
    gone.read(10, "0")  # delivered twice, then its consumer "dies"
    client.set(cfg.dead_letter_key, "not a stream")
    survivor = _consumer(cfg, client, "alive:0")
    time.sleep(0.2)
    fresh, tired = survivor.claim(10)
    assert (fresh, [i for i, _ in tired]) == ([], [suspect])
    assert survivor.dead_letter([(i, f, "delivered too many times") for i, f in tired]) == 0
    assert _pending(client, key, cfg.stream_group) == [suspect]

    client.delete(cfg.dead_letter_key)
    time.sleep(0.2)
    fresh, tired = survivor.claim(10)
    assert survivor.dead_letter([(i, f, "delivered too many times") for i, f in tired]) == 1
    assert _dead(client, cfg) == [(key, suspect)]
    assert _pending(client, key, cfg.stream_group) == []
    assert _count(db, [device]) == 0


def test_only_the_entries_whose_dead_letter_was_written_are_acknowledged(isolated, monkeypatch):
    """One refused XADD among several in the same round trip: the others are moved and acknowledged, the
    refused one stays pending. (Its XADD is pointed at a string key; the refusal is Redis' own.)"""
    client, key, cfg = isolated
    ids = [client.xadd(key, _poison(DEVICE_BASE + 3)).decode() for _ in range(3)]
    consumer = _consumer(cfg, client, "dl:0")
    raw = consumer.read(10, ">")
    broken = f"{cfg.dead_letter_key}:broken"
    client.set(broken, "not a stream")
    real_pipeline = client.pipeline

    def pipeline(*args, **kwargs):
        pipe = real_pipeline(*args, **kwargs)
        xadd, calls = pipe.xadd, []

        def second_refused(name, fields, *a, **kw):
            calls.append(name)
            return xadd(broken if len(calls) == 2 else name, fields, *a, **kw)

        pipe.xadd = second_refused
        return pipe

    monkeypatch.setattr(client, "pipeline", pipeline)
    try:
        assert consumer.dead_letter([(i, f, "poison") for i, f in raw]) == 2
    finally:
        client.delete(broken)
    assert [s for _, s in _dead(client, cfg)] == [ids[0], ids[2]]
    assert _pending(client, key, cfg.stream_group) == [ids[1]]


def test_a_redis_out_of_memory_refuses_the_dead_letter_and_nothing_is_acknowledged(own_redis, base_env, db):
    """maxmemory with noeviction: XADD is refused (denyoom), XACK would not be; the entries stay pending
    until Redis has room again."""
    client, key, cfg = _isolated(own_redis.url, base_env)
    device = DEVICE_BASE + 4
    poison = [client.xadd(key, _poison(device)).decode() for _ in range(3)]
    pipe = _pipeline(cfg, client, "dl:0")
    raw = pipe.consumer.read(100, ">")
    client.config_set("maxmemory", 1)  # every write that may grow memory is refused
    try:
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            client.xadd(f"{key}:probe", {"f": "v"})
        pipe.process(raw)
        assert _pending(client, key, cfg.stream_group) == poison
        assert client.xlen(cfg.dead_letter_key) == 0
    finally:
        client.config_set("maxmemory", 0)
    time.sleep(0.2)
    pipe.consumer.claim_idle_ms = 100
    pipe.drain(5)
    assert [s for _, s in _dead(client, cfg)] == poison
    assert _pending(client, key, cfg.stream_group) == []
    client.close()


def test_a_refused_dead_letter_is_not_retried_in_a_busy_loop(isolated, db):
    """After a restart the consumer reads its own pending entries until none is left; one whose dead letter
    is refused must not come straight back (thousands of refusals a second, until the drain's budget ends):
    it waits for the claim, and what is pending behind it is still stored."""
    client, key, cfg = isolated
    device = DEVICE_BASE + 5
    poison = client.xadd(key, _poison(device)).decode()
    good = client.xadd(key, _entry(device, [["t", int(time.time() * 1000) - 1000, 1.0]])).decode()
    cfg = cfg.replace(claim_idle_ms=60_000)
    _consumer(cfg, client, "dl:0").read(10, ">")  # both delivered to dl:0, which then restarts
    client.set(cfg.dead_letter_key, "not a stream")
    pipe = _pipeline(cfg, client, "dl:0")
    calls = []
    dead_letter = pipe.consumer.dead_letter
    pipe.consumer.dead_letter = lambda items: calls.append([i for i, _, _ in items]) or dead_letter(items)
    pipe.consumer.read = _small_pages(pipe.consumer.read)  # the poison one alone in the first page
    started = time.monotonic()
    result = pipe.drain(2.0)
    assert result.more is False and time.monotonic() - started < 1.5
    assert [c for c in calls if c] == [[poison]]
    assert _pending(client, key, cfg.stream_group) == [poison]
    assert good not in _pending(client, key, cfg.stream_group) and _count(db, [device]) == 1


def _small_pages(read):
    return lambda count, start, block_ms=None: read(1, start, block_ms)
