"""Delivery semantics against real Redis and Postgres: at-least-once transport, exactly-once effect."""
from __future__ import annotations

import json
import os
import signal
import time
import uuid


from tests.conftest import poll

DEVICE_BASE = 7_000_000  # device ids of these tests: telemetry has no foreign key, so none must exist


def _entry(device_id: int, readings: list) -> dict:
    return {"v": "1", "d": str(device_id), "r": json.dumps(readings, separators=(",", ":")),
            "at": str(int(time.time() * 1000))}


def _count(db, device_ids) -> int:
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM telemetry WHERE device_id = ANY(%s)", (list(device_ids),))
        return cur.fetchone()[0]


def _pipeline(cfg, client, name="test:0"):
    from aggregator.consumer import StreamConsumer
    from aggregator.pipeline import Pipeline
    from aggregator.storage import TelemetryStorage
    import psycopg2

    consumer = StreamConsumer(client, cfg.stream_key, cfg.stream_group, name, cfg.dead_letter_key,
                              claim_idle_ms=cfg.claim_idle_ms, max_deliveries=cfg.max_deliveries)
    consumer.ensure_group()
    return Pipeline(consumer, TelemetryStorage(psycopg2.connect(cfg.database_url)), cfg.batch_entries,
                    cfg.retention_days, cfg.batch_readings)


def test_a_redelivered_batch_inserts_nothing_twice_and_counts_duplicates(isolated, db):
    client, key, _, cfg = isolated
    now = int(time.time() * 1000)
    device = DEVICE_BASE + 1
    for i in range(5):
        client.xadd(key, _entry(device, [["t", now - 10_000 + i, float(i)], ["h", now - 10_000 + i, 1.5]]))
    pipe = _pipeline(cfg, client)
    raw = pipe.consumer.read(100, ">")
    first = pipe.process(raw)
    assert (first.readings, first.inserted) == (10, 10)
    again = pipe.process(raw)  # the same entries delivered a second time
    assert (again.readings, again.inserted) == (10, 0)
    assert _count(db, [device]) == 10
    client.xadd(key, _entry(device, [["t", now - 10_000, 0.0], ["t", now - 1, 9.0]]))  # a device resends one
    mixed = pipe.process(pipe.consumer.read(100, ">"))
    assert (mixed.readings, mixed.inserted) == (2, 1)
    assert _count(db, [device]) == 11
    assert client.xpending(key, cfg.stream_group)["pending"] == 0


def test_poison_entries_go_to_the_dead_letter_stream_and_the_rest_is_stored(isolated, db):
    client, key, _, cfg = isolated
    now = int(time.time() * 1000)
    device = DEVICE_BASE + 2
    good = client.xadd(key, _entry(device, [["t", now - 1000, 1.0]])).decode()
    bad = [
        client.xadd(key, {"v": "1", "d": str(device), "r": "not json", "at": "1"}).decode(),
        client.xadd(key, {"v": "9", "d": str(device), "r": "[]", "at": "1"}).decode(),
        client.xadd(key, _entry(device, [["bad name!", now, 1.0]])).decode(),
        client.xadd(key, _entry(device, [["t", now - 400 * 86_400_000, 1.0]])).decode(),
        client.xadd(key, {"d": str(device)}).decode(),
    ]
    pipe = _pipeline(cfg, client)
    result = pipe.process(pipe.consumer.read(100, ">"))
    assert result.dead_letters == len(bad)
    assert _count(db, [device]) == 1
    dead = client.xrange(cfg.dead_letter_key)
    assert [f[b"source_id"].decode() for _, f in dead] == bad
    assert all(f[b"reason"] and f[b"source"].decode() == key for _, f in dead)
    assert client.xpending(key, cfg.stream_group)["pending"] == 0
    assert good not in [f[b"source_id"].decode() for _, f in dead]


def test_an_entry_of_several_requests_stores_each_and_dead_letters_only_the_bad_one(isolated, db):
    client, key, _, cfg = isolated
    now = int(time.time() * 1000)
    a, b = DEVICE_BASE + 7, DEVICE_BASE + 8
    parts = [[a, now, [["t", now - 1000, 1.0], ["h", now - 1000, 2.0]]],
             [b, now + 1, [["t", now - 400 * 86_400_000, 1.0]]],  # older than retention: this request is poison
             [b, now + 2, [["t", now - 999, 3.0]]],
             [a, now + 3, [["t", now - 998, 4.0]]]]
    entry_id = client.xadd(key, {"v": "2", "g": json.dumps(parts, separators=(",", ":"))}).decode()
    pipe = _pipeline(cfg, client)
    result = pipe.process(pipe.consumer.read(100, ">"))
    assert (result.entries, result.readings, result.inserted, result.dead_letters) == (1, 4, 4, 1)
    assert _count(db, [a]) == 3 and _count(db, [b]) == 1
    [(_, letter)] = client.xrange(cfg.dead_letter_key)
    assert letter[b"source_id"].decode() == entry_id and letter[b"part"] == b"1"
    assert (letter[b"v"], letter[b"d"], json.loads(letter[b"r"])) == (b"1", str(b).encode(), parts[1][2])
    assert b"retention" in letter[b"reason"]
    assert client.xpending(key, cfg.stream_group)["pending"] == 0
    with db.cursor() as cur:
        cur.execute("SELECT device_id, metric, value FROM telemetry_latest WHERE device_id = ANY(%s) ORDER BY 1, 2",
                    ([a, b],))
        assert cur.fetchall() == [(a, "h", 2.0), (a, "t", 4.0), (b, "t", 3.0)]


def test_trim_keeps_everything_a_group_has_not_acked(isolated, db):
    client, key, _, cfg = isolated
    now = int(time.time() * 1000)
    ids = [client.xadd(key, _entry(DEVICE_BASE + 3, [["t", now - 5000 + i, 1.0]])).decode() for i in range(10)]
    pipe = _pipeline(cfg, client)
    pipe.process(pipe.consumer.read(4, ">"))  # 4 acked
    pipe.consumer.read(3, ">")  # 3 delivered, still pending; 3 never delivered
    client.xgroup_create(key, "late-group", id=ids[1])  # a second group that has read only up to ids[1]
    assert pipe.consumer.trim() == 2  # only ids[0] and ids[1] are done for both groups
    remaining = [i.decode() for i, _ in client.xrange(key)]
    assert remaining == ids[2:]


def test_a_batch_is_read_and_acknowledged_in_chunks(isolated, db, monkeypatch):
    """Redis serves nobody else while one command runs: a batch of many small entries takes several calls of
    at most `chunk` entries, its own pending entries (after a restart) are paged through by id, and nothing
    is read twice or left out."""
    client, key, _, cfg = isolated
    now = int(time.time() * 1000)
    device = DEVICE_BASE + 5
    pipe = client.pipeline(transaction=False)
    for i in range(100):
        pipe.xadd(key, _entry(device, [["t", now - 5000 + i, float(i)]]))
    ids = [i.decode() for i in pipe.execute()]
    calls: list[tuple[str, int]] = []
    stream = _pipeline(cfg, client).consumer
    for target, name in ((stream.unparsed, "xreadgroup"), (client, "xack")):  # reads skip redis-py's parsing
        real = getattr(target, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls.append((_name, kwargs["count"] if _name == "xreadgroup" else len(args) - 2))
            return _real(*args, **kwargs)
        monkeypatch.setattr(target, name, spy)
    stream.chunk = 40
    first = stream.read(90, ">")  # then the consumer "restarts" before acking
    assert [e for e, _ in first] == ids[:90]
    assert calls == [("xreadgroup", 40), ("xreadgroup", 40), ("xreadgroup", 10)]
    calls.clear()
    again = stream.read(1000, "0")
    assert [e for e, _ in again] == ids[:90]
    assert [c for c in calls if c[0] == "xreadgroup"] == [("xreadgroup", 40)] * 3  # the third page holds 10
    calls.clear()
    stream.ack(e for e, _ in again)
    assert calls == [("xack", 40), ("xack", 40), ("xack", 10)]
    assert client.xpending(key, cfg.stream_group)["pending"] == 0
    assert [e for e, _ in stream.read(1000, ">")] == ids[90:]


def test_claimed_entries_are_counted_by_id_order_not_text_order(isolated):
    """Delivery counts come from the pending range between the lowest and highest claimed id: "5-10" is
    after "5-9", though not as text, and a range taken as text would be empty (every suspect fresh again).
    Counted in pages of `chunk`, past this consumer's other pending entries in the range."""
    client, key, _, cfg = isolated
    ids = ["5-9", "5-10", "5-11"]
    for entry_id in ["5-8", *ids]:
        client.xadd(key, _entry(DEVICE_BASE + 6, [["t", 1, 1.0]]), id=entry_id)
    gone = _pipeline(cfg.replace(claim_idle_ms=50, max_deliveries=2), client, name="gone:0").consumer
    gone.read(10, ">")
    for _ in range(2):
        gone.read(10, "0")  # each read of its own pending entries is one more delivery: 3 in all
    survivor = _pipeline(cfg.replace(claim_idle_ms=50, max_deliveries=2), client, name="alive:0").consumer
    survivor.chunk = 2
    time.sleep(0.1)
    fresh, tired = survivor.claim(10)  # claiming delivers once more: 4 > 2 for every entry
    assert fresh == [] and [e for e, _ in tired] == ["5-8", *ids]
    assert survivor.delivery_counts(ids) == {i: 4 for i in ids}
    # Asked for the two ends only: the two entries between them fill a page and are passed over.
    assert survivor.delivery_counts(["5-11", "5-8"]) == {"5-8": 4, "5-11": 4}


def test_stale_pending_entries_are_claimed_and_poison_suspects_dead_lettered(isolated, db):
    client, key, _, cfg = isolated
    now = int(time.time() * 1000)
    device = DEVICE_BASE + 4
    for i in range(3):
        client.xadd(key, _entry(device, [["t", now - 3000 + i, 1.0]]))
    dead_consumer = _pipeline(cfg.replace(claim_idle_ms=100), client, name="gone:0")
    dead_consumer.consumer.read(10, ">")  # takes all three, then "dies"
    survivor = _pipeline(cfg.replace(claim_idle_ms=100, max_deliveries=5), client, name="alive:0")
    time.sleep(0.2)
    result = survivor.drain(5)
    assert result.inserted == 3 and _count(db, [device]) == 3
    # An entry that keeps failing (here: delivered too often) ends in the dead-letter stream.
    poison_id = client.xadd(key, _entry(device, [["t", now, 2.0]])).decode()
    for _ in range(6):
        dead_consumer.consumer.read(10, "0") or dead_consumer.consumer.read(10, ">")
    time.sleep(0.2)
    survivor.drain(5)
    dead = client.xrange(cfg.dead_letter_key)
    assert [f[b"source_id"].decode() for _, f in dead] == [poison_id]
    assert client.xpending(key, cfg.stream_group)["pending"] == 0


def test_a_worker_killed_mid_batch_loses_nothing_and_doubles_nothing(isolated, db, aggregator_factory):
    client, key, env, cfg = isolated
    now = int(time.time() * 1000)
    devices = [DEVICE_BASE + 100 + d for d in range(10)]
    expected = 0
    pipe = client.pipeline(transaction=False)
    for n in range(2000):
        device = devices[n % len(devices)]
        pipe.xadd(key, _entry(device, [[f"m{k}", now - 3_600_000 + n, float(n * k)] for k in range(100)]))
        expected += 100
    pipe.execute()
    first = aggregator_factory(**{**env, "VT_BATCH_ENTRIES": "20", "VT_CLAIM_IDLE_MS": "1000",
                                  "VT_WORKER_CONCURRENCY": "1"})
    first.start()
    poll(lambda: _count(db, devices) >= 20_000, timeout=60, what="the first worker to store some batches")
    os.killpg(first.worker.pid, signal.SIGKILL)  # the whole worker: parent and pool process, mid-stream
    first.worker.proc.wait(5)
    stored_at_kill = _count(db, devices)
    assert 0 < stored_at_kill < expected, "the kill must land mid-stream for this test to mean anything"
    first.start_worker("--hostname", f"second-{uuid.uuid4().hex[:6]}@%h")
    poll(lambda: _count(db, devices) == expected, timeout=120, interval=0.5, what="every reading stored")
    poll(lambda: client.xpending(key, cfg.stream_group)["pending"] == 0, timeout=30, what="nothing pending")
    with db.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT (device_id, metric, ts)), sum(value) FROM telemetry "
                    "WHERE device_id = ANY(%s)", (devices,))
        total, distinct, value_sum = cur.fetchone()
    assert total == distinct == expected
    assert value_sum == sum(float(n * k) for n in range(2000) for k in range(100))
    assert client.xlen(cfg.dead_letter_key) == 0
