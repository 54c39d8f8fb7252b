"""Failover drills under a steady load through the ingress, on the replicated backends.

- A Redis master SIGKILLed: its replica takes over after the cluster's node timeout. Redis replicates
  asynchronously, so a reading answered 202 in the last moment before the kill may be lost with the master;
  the drill counts such readings (the window) and requires nothing else to go wrong.
- The same with the ingestor waiting for one replica before each 202 (VT_STREAM_WAIT_REPLICAS=1): nothing
  answered 202 may be lost.
- The Postgres primary SIGKILLed and its synchronous standby promoted: every reading answered 202 is stored
  exactly once, and the rollups agree with the raw rows.

The load is tests/load.py's: readings known one by one, so each one answered 202 can be found stored.
"""
from __future__ import annotations

import time

import psycopg2
import pytest
from redis.crc import key_slot

from stack.nginx import Nginx
from stack.servers import free_port
from stack.services import INGESTOR_BINARY, Process
from tests.conftest import ADMIN_TOKEN, READER_TOKEN, SCALE_SHARDS, listen_port
from tests.drills.checks import ONLY_RETRY_LATER, assert_exactly_once, rollup_mismatches
from tests.drills.table import Row
from tests.load import ACCEPTED, RETRY_LATER, LoadGenerator, Summary
from visiontrack.stream import shard_key_for

pytestmark = pytest.mark.skipif(not INGESTOR_BINARY.exists(), reason="ingestor binary not built")

RATE, BATCH, DEVICES = 600.0, 3, 2 * SCALE_SHARDS  # 200 requests/s over every shard
# Seconds of load before the fault, after the replica took over, and after the killed node is back as a replica.
BEFORE, AFTER, AFTER_REJOIN = 3.0, 6.0, 4.0


def _slot_of_shard(base_env: dict, device_id: int) -> int:
    key = shard_key_for(base_env.get("VT_STREAM_KEY", "vt:telemetry"), SCALE_SHARDS, device_id)
    return key_slot(key.encode())


def _accepted_after(load: LoadGenerator, since: float) -> list[str]:
    """The kinds of answer to the requests sent from `since` on (wall clock), other than 202."""
    return sorted({o.kind for o in load.outcomes if o.at >= since and o.kind != ACCEPTED})


def _kill_a_master(redis_cluster, base_env: dict, load: LoadGenerator) -> tuple[float, float, float]:
    """SIGKILL the master of the first device's shard under the load; (wall clock when the replica serves its
    slots, when the killed node is back as its replica, seconds from the kill until the replica served)."""
    slot = _slot_of_shard(base_env, load.devices[0].id)
    time.sleep(BEFORE)
    started = time.monotonic()
    killed = redis_cluster.kill_master_of_slot(slot)
    redis_cluster.wait_slot_served(slot)
    took = time.monotonic() - started
    served_at = time.time()
    time.sleep(AFTER)
    redis_cluster.rejoin(killed)
    rejoined_at = time.time()
    time.sleep(AFTER_REJOIN)
    return served_at, rejoined_at, took


def _check_the_rest(summary: Summary) -> None:
    """Whatever the window lost: nothing doubled, altered, invented or stored though refused; 503s only."""
    counts = {name: getattr(summary, name) for name in ("duplicated", "wrong_value", "unexpected", "stored_refused")}
    assert counts == dict.fromkeys(counts, 0), f"{counts}\n{summary.report()}"
    assert set(summary.refused) <= {RETRY_LATER}, summary.report()


@pytest.fixture(scope="module")
def waiting_ingress(base_env, run_dir, registry_url, query_url):
    """An ingestor that waits for a replica before each 202, behind an nginx of its own."""
    port = free_port()
    env = {**base_env, "VT_LISTEN_ADDR": f"127.0.0.1:{port}", "VT_STREAM_WAIT_REPLICAS": "1",
           "VT_STREAM_WAIT_TIMEOUT_MS": "1000"}
    ingestor = Process("ingestor-wait", "ingestor", env, run_dir / "logs" / "ingestor-wait.log").start(run_dir)
    ingestor.wait_http(listen_port(ingestor))
    ports = {"registry": int(registry_url.rsplit(":", 1)[1]), "query": int(query_url.rsplit(":", 1)[1]),
             "ingestor": port}
    nginx = Nginx(free_port(), ports, run_dir / "nginx-wait", run_dir / "logs")
    nginx.start()
    yield nginx.url
    nginx.stop()
    ingestor.stop()


def test_a_redis_master_killed_under_load_loses_at_most_its_replication_window(
        nginx_ingress, aggregator, redis_cluster, base_env, scale_table):
    load = LoadGenerator(nginx_ingress, ADMIN_TOKEN, devices=DEVICES, rate=RATE, batch=BATCH).start()
    try:
        served_at, _, took = _kill_a_master(redis_cluster, base_env, load)
    finally:
        load.stop()
    summary = load.verify(READER_TOKEN, timeout=120, settle=20)
    scale_table.add(Row.of("Redis master killed (replication asynchronous)", summary, took))
    _check_the_rest(summary)
    # Asynchronous replication on loopback trails by well under a second of writes.
    assert summary.missing <= RATE, summary.report()
    assert _accepted_after(load, served_at + 3) == [], "still refusing 3 s after the replica took over"


def test_a_redis_master_killed_loses_nothing_acknowledged_when_writes_wait_for_a_replica(
        waiting_ingress, aggregator, redis_cluster, base_env, scale_table):
    load = LoadGenerator(waiting_ingress, ADMIN_TOKEN, devices=DEVICES, rate=RATE, batch=BATCH).start()
    try:
        _, rejoined_at, took = _kill_a_master(redis_cluster, base_env, load)
    finally:
        load.stop()
    summary = load.verify(READER_TOKEN, timeout=120)
    scale_table.add(Row.of("Redis master killed, writes wait for a replica", summary, took))
    assert_exactly_once(summary, ONLY_RETRY_LATER)
    # The promoted master has no replica of its own until the killed node is back: until then its shards'
    # writes are refused (503, "may be stored"), which is what waiting for a replica means.
    assert _accepted_after(load, rejoined_at + 2) == [], "still refusing 2 s after the node came back as a replica"


def test_the_postgres_standby_promoted_under_load_loses_and_doubles_nothing(
        nginx_ingress, aggregator, postgres_pair, scale_table):
    load = LoadGenerator(nginx_ingress, ADMIN_TOKEN, devices=DEVICES, rate=RATE, batch=BATCH).start()
    try:
        time.sleep(BEFORE)
        started = time.monotonic()
        postgres_pair.promote_standby()
        took = time.monotonic() - started
        time.sleep(AFTER)
    finally:
        load.stop()
    summary = load.verify(READER_TOKEN, timeout=180)
    scale_table.add(Row.of("Postgres primary killed, synchronous standby promoted", summary, took))
    assert_exactly_once(summary, ONLY_RETRY_LATER)
    conn = psycopg2.connect(postgres_pair.standby.url)
    try:
        assert rollup_mismatches(conn, [d.id for d in load.devices]) == []
    finally:
        conn.close()
