"""An asynchronous Postgres standby promoted under load, with and without VT_STANDBY_CONFIRM_SECONDS.

The aggregator acknowledges stream entries once their batch is committed. With an asynchronous standby, a
commit the standby had not yet received is lost by a failover to it, and its entries are acknowledged, so
nothing stores them again: the window. With VT_STANDBY_CONFIRM_SECONDS the aggregator acknowledges only
once a standby has flushed the commit, which closes it (docs/scale-out.md, "An asynchronous standby").

Each case runs on a stack of its own: a new primary and asynchronous standby, the registry, query service,
ingestor and nginx, an aggregator, on its own stream key of the session's Redis Cluster and its own broker
database.
"""
from __future__ import annotations

import time
import uuid

import psycopg2
import pytest

from stack.nginx import Nginx
from stack.replicated import PostgresPair
from stack.servers import free_port
from stack.services import INGESTOR_BINARY, Process
from tests.conftest import ADMIN_TOKEN, READER_TOKEN, Aggregator, _web, listen_port
from tests.drills.checks import ONLY_RETRY_LATER, assert_exactly_once
from tests.drills.table import Row
from tests.load import LoadGenerator

pytestmark = pytest.mark.skipif(not INGESTOR_BINARY.exists(), reason="ingestor binary not built")

RATE, BATCH, DEVICES = 1500.0, 5, 12
BEFORE, AFTER = 4.0, 6.0


@pytest.fixture(params=[0.0, 5.0], ids=["acknowledged-at-commit", "acknowledged-once-the-standby-has-it"])
def async_stack(request, base_env, redis_server, run_dir):
    confirm = request.param
    tag = uuid.uuid4().hex[:8]
    pair = PostgresPair(run_dir / f"pg-async-{tag}", synchronous=False)
    pair.start()
    started: list = []
    try:
        env = {**base_env, "DATABASE_URL": pair.write_url, "VT_DATABASE_READ_URL": pair.read_url,
               "VT_STREAM_KEY": f"vt:async:{tag}", "VT_DEAD_LETTER_KEY": f"vt:async:{tag}:dead",
               "VT_BROKER_URL": redis_server.url.rsplit("/", 1)[0] + "/3",
               "VT_BEAT_SCHEDULE_FILE": str(run_dir / f"beat-async-{tag}")}
        Process(f"migrate-{tag}", "migrate", env, run_dir / "logs" / f"migrate-{tag}.log").run_to_end(run_dir)
        registry, registry_url = _web("registry", env, run_dir)
        query, query_url = _web("query", env, run_dir)
        port = free_port()
        ingestor = Process(f"ingestor-{tag}", "ingestor", {**env, "VT_LISTEN_ADDR": f"127.0.0.1:{port}"},
                           run_dir / "logs" / f"ingestor-{tag}.log").start(run_dir)
        started += [registry, query, ingestor]
        ingestor.wait_http(listen_port(ingestor))
        nginx = Nginx(free_port(), {"registry": int(registry_url.rsplit(":", 1)[1]),
                                    "query": int(query_url.rsplit(":", 1)[1]), "ingestor": port},
                      run_dir / f"nginx-{tag}", run_dir / "logs")
        nginx.start()
        started.append(nginx)
        aggregator = Aggregator(env, run_dir, VT_STANDBY_CONFIRM_SECONDS=str(confirm)).start()
        started.append(aggregator)
        yield pair, nginx.url, confirm
    finally:
        for part in reversed(started):
            part.stop()
        pair.stop()


def test_an_asynchronous_standby_promoted_under_load(async_stack, scale_table):
    pair, ingress, confirm = async_stack
    load = LoadGenerator(ingress, ADMIN_TOKEN, devices=DEVICES, rate=RATE, batch=BATCH).start()
    try:
        time.sleep(BEFORE)
        lag = _replay_lag_bytes(pair)
        started = time.monotonic()
        pair.promote_standby()
        took = time.monotonic() - started
        time.sleep(AFTER)
    finally:
        load.stop()
    summary = load.verify(READER_TOKEN, timeout=120, settle=None if confirm else 20)
    name = ("asynchronous standby promoted, acknowledged once the standby has it" if confirm
            else f"asynchronous standby promoted, acknowledged at commit (standby {lag} bytes behind at the kill)")
    scale_table.add(Row.of(f"Postgres: {name}", summary, took))
    if confirm:
        assert_exactly_once(summary, ONLY_RETRY_LATER)
    else:
        # The window: what the standby lacked at the kill. Nothing else may go wrong.
        counts = {n: getattr(summary, n) for n in ("duplicated", "wrong_value", "unexpected", "stored_refused")}
        assert counts == dict.fromkeys(counts, 0), f"{counts}\n{summary.report()}"


def _replay_lag_bytes(pair: PostgresPair) -> int:
    conn = psycopg2.connect(pair.primary.url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn)), 0)::bigint "
                        "FROM pg_stat_replication")
            return cur.fetchone()[0]
    finally:
        conn.close()
