"""The listening drain against real Redis and Postgres: batches closed by size on a busy stream and by age on
a quiet one, and the leases that decide who listens."""
from __future__ import annotations

import threading
import time

import pytest

from aggregator.listen_lease import shard_lease_key
from tests.conftest import poll
from tests.integration.test_delivery import _count, _entry, _pipeline

DEVICE_BASE = 7_300_000


def _spy_batches(pipe) -> list[int]:
    sizes: list[int] = []
    store = pipe.store

    def spy(batch):
        sizes.append(batch.entries)
        return store(batch)
    pipe.store = spy
    return sizes


def test_a_busy_stream_is_stored_in_full_batches_while_listening(isolated, db):
    client, key, _, cfg = isolated
    now = int(time.time() * 1000)
    devices = [DEVICE_BASE + d for d in range(100)]
    pipe = client.pipeline(transaction=False)
    for n in range(30_000):
        pipe.xadd(key, _entry(devices[n % 100], [["t", now - 600_000 + n // 100, float(n)]]))
        if n % 1000 == 999:
            pipe.execute()
    pipe.execute()
    drain = _pipeline(cfg, client)
    drain.max_wait_seconds = 0.05
    sizes = _spy_batches(drain)
    result = _drain_until(drain, lambda: _count(db, devices) == 30_000)
    assert _count(db, devices) == 30_000 and client.xpending(key, cfg.stream_group)["pending"] == 0
    # The batch size follows the entries' size from its first guess (100 readings each) towards the limit
    # (10,000 entries); what is waiting is never cut into batches by age.
    assert sum(sizes) == 30_000 and len(sizes) <= 9, sizes
    assert all(b > a for a, b in zip(sizes, sizes[1:-1])) and sizes[-2] > 5000, sizes
    assert result.entries == 30_000


def test_a_quiet_stream_is_stored_within_the_batch_age(isolated, db):
    client, key, _, cfg = isolated
    device = DEVICE_BASE + 500
    drain = _pipeline(cfg, client)
    drain.max_wait_seconds = 0.05
    sizes = _spy_batches(drain)
    outcome = {}
    listener = threading.Thread(target=lambda: outcome.update(result=drain.drain(6, listen=True)))
    listener.start()
    time.sleep(0.5)  # listening on an empty stream
    waits = []
    for i in range(10):
        client.xadd(key, _entry(device, [["t", int(time.time() * 1000) - 10, float(i)]]))
        added = time.monotonic()
        poll(lambda n=i + 1: _count(db, [device]) == n, timeout=5, interval=0.002, what=f"reading {i} stored")
        waits.append(time.monotonic() - added)
        time.sleep(0.1)
    assert listener.is_alive(), "a listening drain returns at the end of its budget, not when the stream is empty"
    listener.join(10)
    assert outcome["result"].entries == 10 and sizes == [1] * 10
    # Stored once 50 ms old, plus the commit; generous for a loaded machine, far below beat's ticks.
    assert sorted(waits)[len(waits) // 2] < 0.25 and max(waits) < 0.75, waits


def test_a_drain_that_does_not_listen_returns_when_the_stream_is_empty(isolated, db):
    client, key, _, cfg = isolated
    device = DEVICE_BASE + 600
    client.xadd(key, _entry(device, [["t", int(time.time() * 1000) - 10, 1.0]]))
    started = time.monotonic()
    result = _pipeline(cfg, client).drain(6, listen=False)
    assert time.monotonic() - started < 2 and result.entries == 1 and not result.more
    assert _count(db, [device]) == 1


def _backlog(client, key, device: int, entries: int, seconds_old: float) -> None:
    """Entries Redis appended `seconds_old` ago, as a backlog a listener has not reached (explicit ids)."""
    at = int((time.time() - seconds_old) * 1000)
    pipe = client.pipeline(transaction=False)
    for n in range(entries):
        pipe.xadd(key, _entry(device, [["t", at - 60_000 + n, float(n)]]), id=f"{at}-{n + 1}")
    pipe.execute()


def test_a_helper_beside_a_listener_returns_once_it_has_caught_up(isolated, db):
    """Two drains splitting a stream the listener keeps up with only make smaller batches (more commits,
    more CPU a reading): a helper returns as soon as the entries it reads are fresh."""
    client, key, _, cfg = isolated
    device = DEVICE_BASE + 700
    stop = threading.Event()

    def write():  # a steady trickle of fresh entries, as under load the listener keeps up with
        n = 0
        while not stop.is_set():
            client.xadd(key, _entry(device, [["t", int(time.time() * 1000) - 5_000 + n % 1000, float(n)]]))
            n += 1
            time.sleep(0.002)
    writer = threading.Thread(target=write)
    writer.start()
    try:
        time.sleep(0.2)
        started = time.monotonic()
        helped = _pipeline(cfg, client, "helper").drain(3, helper=True)
        helped_for = time.monotonic() - started
    finally:
        stop.set()
        writer.join()
    # It read what was waiting (0.2 s of entries), found the next ones fresh and went while entries still
    # came; a drain with no listener beside it goes on until it finds the stream empty.
    assert helped.entries >= 1 and not helped.more and helped_for < 1.0, (helped, helped_for)


def test_a_helper_works_off_a_backlog_the_listener_is_behind_on(isolated, db):
    client, key, _, cfg = isolated
    device = DEVICE_BASE + 710
    _backlog(client, key, device, 5_000, seconds_old=10)
    result = _pipeline(cfg, client, "helper").drain(10, helper=True)
    assert result.entries == 5_000 and _count(db, [device]) == 5_000


def test_a_listener_that_falls_behind_asks_for_help_once_a_second(isolated, db):
    from aggregator.pipeline import HELP_EVERY_SECONDS

    client, key, _, cfg = isolated
    device = DEVICE_BASE + 720
    drain = _pipeline(cfg, client)
    drain.batch_entries = 500  # several batches, several reads of old entries
    asked: list[float] = []
    _backlog(client, key, device, 3_000, seconds_old=5)
    started = time.monotonic()
    result = drain.drain(2.5, listen=True, ask_for_help=lambda: asked.append(time.monotonic() - started))
    assert result.entries == 3_000 and _count(db, [device]) == 3_000
    assert 1 <= len(asked) <= 2.5 / HELP_EVERY_SECONDS + 1, asked
    fresh: list[float] = []
    client.xadd(key, _entry(device, [["t", int(time.time() * 1000), 1.0]]))
    drain.drain(1.0, listen=True, ask_for_help=lambda: fresh.append(1.0))
    assert fresh == [] and _count(db, [device]) == 3_001, "a listener keeping up asks for nobody"


def test_a_worker_whose_listener_falls_behind_starts_a_helper_without_waiting_for_beat(
        isolated, db, aggregator_factory):
    """The whole path through Celery: the listening drain reads old entries, enqueues a helper drain, and the
    worker's other process runs it (a second consumer of the group) long before beat's next tick."""
    client, key, env, cfg = isolated
    device = DEVICE_BASE + 730
    aggregator_factory(**{**env, "VT_DRAIN_INTERVAL_SECONDS": "15", "VT_DRAIN_BUDGET_SECONDS": "60",
                          "VT_WORKER_CONCURRENCY": "2"}).start()  # stopped by the fixture
    poll(lambda: client.exists(shard_lease_key(key)), timeout=40, interval=0.05, what="a drain listening")
    poll(lambda: len(client.xinfo_consumers(key, cfg.stream_group)) == 1, timeout=5, interval=0.05,
         what="the listener reading")
    _backlog(client, key, device, 20_000, seconds_old=10)
    # Within 5 s, where beat's next tick is 15 s after the listener's.
    poll(lambda: len(client.xinfo_consumers(key, cfg.stream_group)) == 2, timeout=5, interval=0.05,
         what="a helper drain reading beside the listener")
    poll(lambda: _count(db, [device]) == 20_000, timeout=60, what="the backlog stored")


def _drain_until(pipe, done, budget: float = 2.0, rounds: int = 30):
    """Listening drains one after another, as the task hands over, until `done()`; their results summed."""
    from aggregator.pipeline import DrainResult

    total = DrainResult()
    for _ in range(rounds):
        total.add(pipe.drain(budget, listen=True))
        if done():
            return total
    raise AssertionError("the stream was not drained")


# --- the leases ----------------------------------------------------------------------------------------
@pytest.fixture
def lease_factory(isolated):
    from aggregator.listen_lease import ListenLease

    client, key, _, _ = isolated
    return lambda node="n1", slots=1, ttl=5.0, shard=key: ListenLease(client, shard, node, slots, ttl)


def test_one_listener_per_shard(lease_factory):
    first, second = lease_factory(node="n1"), lease_factory(node="n2")
    assert first.acquire() and not second.acquire()
    first.release()
    assert second.acquire()


def test_a_node_keeps_a_process_free_for_other_tasks(lease_factory, isolated):
    _, key, _, _ = isolated
    a, b = lease_factory(slots=1, shard=f"{key}:a"), lease_factory(slots=1, shard=f"{key}:b")
    assert a.acquire() and not b.acquire(), "one slot: a second shard's drain on this node must not listen"
    assert not lease_factory(slots=0, shard=f"{key}:c").acquire(), "one worker process: nothing listens"
    assert lease_factory(node="n2", slots=1, shard=f"{key}:b").acquire(), \
        "another node's slot is its own, and the refused drain kept no lease of the shard"
    c = lease_factory(slots=1, shard=f"{key}:c")
    assert not c.acquire()
    a.release()
    assert c.acquire(), "a released listener frees its node's slot"


def test_a_lease_expires_and_a_late_release_frees_nothing_of_another(lease_factory, isolated):
    client, key, _, _ = isolated
    killed = lease_factory(ttl=1.0)
    assert killed.acquire()
    successor = lease_factory()
    assert not successor.acquire()
    time.sleep(1.1)  # the killed listener's leases expire
    assert successor.acquire()
    killed.release()  # it comes back: its release must not free the successor's leases
    assert client.get(shard_lease_key(key)).decode() == successor.token


def test_a_drain_refused_the_lease_knows_whether_another_listens(lease_factory, isolated):
    _, key, _, _ = isolated
    listener, beside = lease_factory(node="n1"), lease_factory(node="n2")
    assert not beside.taken_by_another(), "nobody listens yet"
    assert listener.acquire() and not beside.acquire()
    assert beside.taken_by_another() and not listener.taken_by_another()
    node_full = lease_factory(slots=0, shard=f"{key}:other")
    assert not node_full.acquire() and not node_full.taken_by_another(), \
        "refused for want of a node slot, the shard has no listener: drain it to the end"
    listener.release()
    assert not beside.taken_by_another()
