"""The services on the engines of a scaled-out deployment: Redis Cluster (3 masters, 3 replicas) for the
stream and the token index, a plain Redis as Celery's broker, and a Postgres primary with a synchronous hot
standby. A device is registered, its telemetry posted over 8 stream shards spread on the cluster's
masters, drained into the primary by a real worker and beat, and read back by the query service from the
standby."""
from __future__ import annotations

import time

import psycopg2
import pytest
import requests

from stack.replicated import PostgresPair, RedisCluster
from stack.servers import Redis, free_port, scratch_dir
from stack.services import Process
from tests.conftest import ADMIN_TOKEN, Aggregator, _web, poll
from visiontrack import config as config_module
from visiontrack import device_stats, redis_client
from visiontrack.stream import shard_key_for
from visiontrack.tokens import changed_key, index_value, rebuild_index, token_sha256

pytestmark = pytest.mark.scale

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SHARDS = 8
DEVICES = 8  # device ids follow each other: one device per shard, whatever the first id
READINGS = 5


@pytest.fixture(scope="module")
def run_dir():
    return scratch_dir("vt-scale-")


@pytest.fixture(scope="module")
def cluster(run_dir):
    nodes = RedisCluster(run_dir / "redis-cluster")
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture(scope="module")
def pg(run_dir):
    pair = PostgresPair(run_dir / "pg")
    try:
        pair.start()
        yield pair
    finally:
        pair.stop()


@pytest.fixture(scope="module")
def broker(run_dir):
    server = Redis(run_dir / "broker", free_port(), run_dir / "logs" / "broker.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def env(cluster, pg, broker, run_dir) -> dict[str, str]:
    env = {
        "DATABASE_URL": pg.write_url,
        "REDIS_URL": cluster.url,
        "VT_REDIS_CLUSTER": "true",
        "VT_BROKER_URL": broker.url,
        "VT_STREAM_SHARDS": str(SHARDS),
        "VT_ADMIN_TOKENS": ADMIN_TOKEN,
        "VT_HTTP_WORKERS": "1",
        "VT_METRICS_PORT": "0",
        "VT_BEAT_SCHEDULE_FILE": str(run_dir / "beat-schedule"),
    }
    Process("migrate", "migrate", env, run_dir / "logs" / "migrate.log").run_to_end(run_dir)
    return env


@pytest.fixture(scope="module")
def client(env):
    """The tests' own cluster client, made by the services' factory."""
    c = redis_client.from_config(config_module.load(env), socket_timeout=5, decode_responses=True)
    assert redis_client.is_cluster(c)
    yield c
    c.close()


@pytest.fixture(scope="module")
def registry(env, run_dir):
    proc, url = _web("registry", env, run_dir)
    yield url
    proc.stop()


@pytest.fixture(scope="module")
def query(env, pg, run_dir):
    """Reads from the standby; each append waits for the one replica every master has."""
    proc, url = _web("query", env, run_dir, VT_DATABASE_READ_URL=pg.read_url, VT_STREAM_WAIT_REPLICAS="1",
                     VT_STREAM_WAIT_TIMEOUT_MS="2000")
    yield url
    proc.stop()


@pytest.fixture(scope="module")
def devices(registry) -> list[dict]:
    out = []
    for i in range(DEVICES):
        resp = requests.post(f"{registry}/api/devices/", json={"name": f"scale-{i}-{time.time_ns()}"}, headers=ADMIN,
                             timeout=10)
        assert resp.status_code == 201, resp.text
        out.append(resp.json())
    return out


@pytest.fixture(scope="module")
def aggregator(env, run_dir):
    agg = Aggregator(env, run_dir, VT_TOKEN_INDEX_REPAIR_SECONDS="2").start()
    yield agg
    agg.stop()


def _post(query_url: str, token: str, first_ts: int, n: int = READINGS) -> requests.Response:
    body = [{"ts": first_ts + i, "values": {"temperature": 20.0 + i}} for i in range(n)]
    return requests.post(f"{query_url}/api/telemetry/", json=body, headers={"Authorization": f"Bearer {token}"},
                         timeout=10)


def test_a_registered_device_token_lands_in_the_cluster_token_index(devices, client, env):
    key = config_module.load(env).token_index_key
    for device in devices:
        assert client.hget(key, token_sha256(device["token"])) == index_value(device["id"], "active")
    # The registry's MULTI noted each change in the index's own slot.
    assert client.ttl(changed_key(key)) > 0


def test_posted_telemetry_spreads_over_the_cluster_shards_and_reaches_the_primary(devices, query, client, cluster,
                                                                                     pg, aggregator):
    start = int(time.time() * 1000) - 60_000
    for device in devices:
        resp = _post(query, device["token"], start)
        assert resp.status_code == 202, resp.text
    keys = {shard_key_for("vt:telemetry", SHARDS, d["id"]) for d in devices}
    assert len(keys) == SHARDS
    for key in keys:  # written there, whether or not drained and trimmed since
        assert client.xinfo_stream(key)["entries-added"] >= 1
    masters = {cluster.node_of_slot(client.keyslot(k)).port for k in keys}
    assert len(masters) > 1, "every shard on one master: the cluster shares nothing out"

    ids = [d["id"] for d in devices]

    def stored():
        with psycopg2.connect(pg.primary.url) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM telemetry WHERE device_id = ANY(%s)", (ids,))
            n = cur.fetchone()[0]
        conn.close()
        return n == DEVICES * READINGS

    poll(stored, timeout=60, interval=0.5, what="every shard drained into the primary")
    for key in keys:  # and acknowledged
        poll(lambda key=key: client.xpending(key, "aggregators")["pending"] == 0, timeout=30, what=f"{key} acked")


def test_the_query_service_reads_the_rows_from_the_standby(devices, query, pg, aggregator):
    test_ids = [d["id"] for d in devices]
    poll(lambda: _standby_count(pg, test_ids) == DEVICES * READINGS, timeout=60, what="rows on the standby")
    device = devices[0]
    resp = requests.get(f"{query}/api/telemetry/", params={"device_id": device["id"], "metric": "temperature"},
                        headers=ADMIN, timeout=10)
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["items"]) == READINGS
    latest = requests.get(f"{query}/api/telemetry/latest", params={"device_id": device["id"]}, headers=ADMIN,
                          timeout=10)
    assert latest.status_code == 200 and "temperature" in latest.json()["values"], latest.text
    # The reads' pooled connections stay open: on the standby, never on the primary.
    assert "visiontrack-query-read" in _application_names(pg.standby.url)
    assert "visiontrack-query-read" not in _application_names(pg.primary.url)


def test_the_replica_lag_is_exported(query):
    text = requests.get(f"{query}/metrics", timeout=10).text
    lines = [line for line in text.splitlines() if line.startswith("visiontrack_query_replica_lag_seconds")]
    assert lines, text[-2000:]
    # Synchronous (remote_apply): the standby has replayed everything it received.
    assert float(lines[0].split()[-1]) == 0.0


def test_too_few_replicas_answer_503_and_the_entry_stays(devices, env, run_dir, client):
    """Each master has one replica: waiting for two can only time out. The write is refused; the entry is in
    the stream all the same (a resend is a duplicate the aggregator drops)."""
    proc, url = _web("query", env, run_dir, VT_STREAM_WAIT_REPLICAS="2", VT_STREAM_WAIT_TIMEOUT_MS="100")
    try:
        device = devices[1]
        key = shard_key_for("vt:telemetry", SHARDS, device["id"])
        before = client.xinfo_stream(key)["entries-added"]
        resp = _post(url, device["token"], int(time.time() * 1000) - 30_000, n=1)
        assert resp.status_code == 503 and resp.headers.get("Retry-After"), resp.text
        assert "replicas" in resp.json()["message"]
        assert client.xinfo_stream(key)["entries-added"] == before + 1
    finally:
        proc.stop()


def test_registry_changes_reach_the_cluster_index(devices, registry, env, client):
    """Status changes and deletions change the index in one MULTI with the changed set (one slot), the stats
    read the counters of many slots in one pipeline, and forgetting them deletes across slots."""
    key = config_module.load(env).token_index_key
    device = devices[-1]
    sha = token_sha256(device["token"])
    resp = requests.patch(f"{registry}/api/devices/{device['id']}", json={"status": "disabled"}, headers=ADMIN,
                          timeout=10)
    assert resp.status_code == 200, resp.text
    assert client.hget(key, sha) == index_value(device["id"], "disabled")
    stats = requests.get(f"{registry}/api/devices/{device['id']}/stats", headers=ADMIN, timeout=10)
    assert stats.status_code == 200, stats.text
    counters = device_stats.all_keys(device["id"], int(time.time() * 1000))
    client.hset(counters[0], "received", 1)
    assert len({client.keyslot(k) for k in counters}) > 1
    assert client.delete(*counters) == 1  # what the purge does: redis-py sends a DEL per slot
    assert requests.delete(f"{registry}/api/devices/{device['id']}", headers=ADMIN, timeout=10).status_code == 204
    assert client.hget(key, sha) is None


def test_the_token_index_is_rebuilt_on_the_cluster(devices, env, pg, client, aggregator):
    key = config_module.load(env).token_index_key
    lost = token_sha256(devices[2]["token"])
    client.hdel(key, lost)  # drift: the aggregator's repair task puts it back (every 2 s here)
    poll(lambda: client.hget(key, lost) == index_value(devices[2]["id"], "active"), timeout=30,
         what="the repair task to rebuild the index")
    # And a rebuild run here, on the services' own cluster client: RENAME and MULTI in the index's slot.
    services_client = redis_client.from_config(config_module.load(env), socket_timeout=5)
    conn = psycopg2.connect(pg.write_url)
    try:
        count = rebuild_index(conn, services_client, key)
        conn.commit()
    finally:
        conn.close()
        services_client.close()
    assert count == client.hlen(key) >= DEVICES - 1  # one deleted above
    assert not client.exists(changed_key(key))
    assert not list(client.scan_iter(match=f"{{{key}}}:rebuild:*"))


def _standby_count(pg, ids) -> int:
    with psycopg2.connect(pg.standby.url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM telemetry WHERE device_id = ANY(%s)", (ids,))
        n = cur.fetchone()[0]
    conn.close()
    return n


def _application_names(url: str) -> set[str]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT application_name FROM pg_stat_activity WHERE datname = current_database()")
        names = {row[0] for row in cur.fetchall()}
    conn.close()
    return names
