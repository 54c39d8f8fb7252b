"""The ingestor binary on a real Redis Cluster (3 masters, 3 replicas; VT_REDIS_CLUSTER=true): stream shards
spread over the masters, the token index and per-device counters on theirs, a master killed while devices post,
and VT_STREAM_WAIT_REPLICAS (WAIT on the master that took the entry)."""
from __future__ import annotations

import threading
import time
import urllib.request
import uuid

import pytest
import redis
import requests

from stack.replicated import RedisCluster
from stack.servers import free_port
from stack.services import INGESTOR_BINARY, Process
from tests.conftest import poll
from tests.integration.test_mqtt import V5, Device
from visiontrack.stream import decode_entry
from visiontrack.tokens import index_value, token_sha256

pytestmark = pytest.mark.scale

SHARDS = 8


def _cluster(run_dir):
    if not INGESTOR_BINARY.exists():
        pytest.fail(f"ingestor binary not built ({INGESTOR_BINARY}); run `make ingestor-build`")
    cluster = RedisCluster(run_dir / f"cluster-{uuid.uuid4().hex[:8]}")
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="module")
def cluster(run_dir):
    """A cluster for the tests that leave it whole."""
    server = _cluster(run_dir)
    yield server
    server.stop()


class ClusterIngestor:
    """The ingestor binary on free ports, on the cluster, with a stream and token index of its own."""

    def __init__(self, cluster: RedisCluster, run_dir, **env: str):
        self.cluster = cluster
        self.redis = redis.RedisCluster.from_url(cluster.url, decode_responses=True)
        tag = uuid.uuid4().hex[:8]
        self.stream = f"vt:scale:{tag}"
        self.index = f"vt:scale-tokens:{tag}"
        self.http_port, self.mqtt_port = free_port(), free_port()
        self.env = {"REDIS_URL": cluster.url, "VT_REDIS_CLUSTER": "true", "VT_STREAM_SHARDS": str(SHARDS),
                    "VT_STREAM_KEY": self.stream, "VT_TOKEN_INDEX_KEY": self.index,
                    "VT_LISTEN_ADDR": f"127.0.0.1:{self.http_port}", "VT_MQTT_ADDR": f"127.0.0.1:{self.mqtt_port}",
                    "VT_WORKER_THREADS": "2", "VT_RATE_LIMIT": "0", "VT_LOG_LEVEL": "info", **env}
        self.proc = Process(f"ingestor-scale-{tag}", "ingestor", self.env, run_dir / "logs" / f"ingestor-{tag}.log")
        self.run_dir = run_dir

    def __enter__(self) -> "ClusterIngestor":
        self.proc.start(self.run_dir)
        self.proc.wait_http(self.http_port)
        return self

    def __exit__(self, *exc) -> None:
        self.proc.stop()
        self.redis.close()

    def device(self, device_id: int) -> str:
        token = f"vtd_scale_{uuid.uuid4().hex}"
        self.redis.hset(self.index, token_sha256(token), index_value(device_id, "active"))
        return token

    def post(self, token: str, body, timeout: float = 10) -> requests.Response:
        return requests.post(f"http://127.0.0.1:{self.http_port}/api/ingest", json=body,
                             headers={"Authorization": f"Bearer {token}"}, timeout=timeout)

    def shard_key(self, device_id: int) -> str:
        return f"{self.stream}:{{{device_id % SHARDS}}}"

    def readings(self, device_id: int) -> list[list]:
        return [r for entry_id, fields in self.redis.xrange(self.shard_key(device_id), "-", "+")
                for e in decode_entry(entry_id, fields) if e.device_id == device_id for r in e.readings]

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5) as resp:
            return resp.read().decode()


def _replicas_in_sync(cluster: RedisCluster) -> None:
    """Until every master's replica has finished its first sync: before it, WAIT counts none."""
    def in_sync():
        infos = [redis.Redis(port=port).info("replication") for port in cluster.master_ports()]
        return all(info["connected_slaves"] == cluster.replicas
                   and all(info[f"slave{i}"]["state"] == "online" for i in range(cluster.replicas)) for info in infos)

    poll(in_sync, timeout=30, what="every replica online")


def _counter(metrics: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(name))


def test_readings_land_on_their_shards_across_the_masters(cluster, run_dir):
    with ClusterIngestor(cluster, run_dir) as ingestor:
        devices = range(9_200_000, 9_200_000 + 2 * SHARDS)
        tokens = {d: ingestor.device(d) for d in devices}
        now = int(time.time() * 1000)
        for d in devices:
            reply = ingestor.post(tokens[d], {"ts": now - d % 1000, "values": {"t": d % 97}})
            assert reply.status_code == 202, reply.text
        for d in devices:
            assert ingestor.readings(d) == [["t", now - d % 1000, d % 97]], d
        masters = {cluster.node_of_slot(ingestor.redis.keyslot(ingestor.shard_key(d))).port for d in devices}
        assert len(masters) >= 2, f"{SHARDS} shards on one master: {masters}"

        # MQTT: the same appender, a PUBACK only once the entry is in.
        client = Device(ingestor.mqtt_port, tokens[devices[0]], V5).connect()
        try:
            assert client.ack(client.publish({"ts": now - 1, "values": {"m": 1}})) == 0
        finally:
            client.close()
        assert ["m", now - 1, 1] in ingestor.readings(devices[0])


def test_a_bad_token_is_refused_and_writes_nothing(cluster, run_dir):
    with ClusterIngestor(cluster, run_dir) as ingestor:
        reply = ingestor.post("vtd_nobody_knows_this", {"t": 1})
        assert (reply.status_code, reply.json()["error"]) == (401, "unauthorized")
        assert all(ingestor.redis.exists(ingestor.shard_key(i)) == 0 for i in range(SHARDS))


def test_device_stats_are_written_on_the_cluster(cluster, run_dir):
    with ClusterIngestor(cluster, run_dir) as ingestor:
        devices = range(9_300_000, 9_300_000 + 20)
        tokens = {d: ingestor.device(d) for d in devices}
        for d in devices:
            assert ingestor.post(tokens[d], {"t": 1}).status_code == 202
            assert ingestor.post(tokens[d], {"t": "hot"}).status_code == 400

        def flushed():
            return all(ingestor.redis.hget(f"vt:device-stats:{d}:total", "received") == "2" for d in devices)

        poll(flushed, timeout=10, what="every device's counters in Redis")
        total = ingestor.redis.hgetall(f"vt:device-stats:{devices[0]}:total")
        assert (total["accepted"], total["readings"], total["rejected:invalid_value"]) == ("1", "1", "1")
        assert int(total["last_accepted_ms"]) > 0
        buckets = [k for port in cluster.master_ports()
                   for k in redis.Redis(port=port, decode_responses=True).keys(f"vt:device-stats:{devices[0]}:b:*")]
        assert len(buckets) == 1
        assert ingestor.redis.hget(buckets[0], "received") == "2"
        assert 0 < ingestor.redis.ttl(buckets[0]) <= 3900


def test_wait_for_one_replica_is_202(cluster, run_dir):
    _replicas_in_sync(cluster)
    # A generous wait: a loaded test machine may be slow to pass the entry on.
    with ClusterIngestor(cluster, run_dir, VT_STREAM_WAIT_REPLICAS="1", VT_STREAM_WAIT_TIMEOUT_MS="5000") as ingestor:
        for d in range(9_400_000, 9_400_000 + SHARDS):  # one request to every shard, so every master
            assert ingestor.post(ingestor.device(d), {"t": 1}).status_code == 202
        assert _counter(ingestor.metrics(), "visiontrack_ingestor_stream_wait_short_total") == 0


def test_wait_for_more_replicas_than_there_are_is_503_after_the_timeout(cluster, run_dir):
    with ClusterIngestor(cluster, run_dir, VT_STREAM_WAIT_REPLICAS="2", VT_STREAM_WAIT_TIMEOUT_MS="300") as ingestor:
        device = 9_500_001
        token = ingestor.device(device)
        started = time.monotonic()
        reply = ingestor.post(token, {"t": 1})
        assert reply.status_code == 503, reply.text
        assert time.monotonic() - started >= 0.3
        assert reply.headers.get("Retry-After")
        assert _counter(ingestor.metrics(), "visiontrack_ingestor_stream_wait_short_total") >= 1
        # Refused, yet in the stream: a resend is a duplicate the aggregator drops.
        assert len(ingestor.readings(device)) == 1


def test_killing_the_master_of_a_shard_gives_503_briefly_then_202_again(run_dir):
    cluster = _cluster(run_dir)
    try:
        _replicas_in_sync(cluster)
        with ClusterIngestor(cluster, run_dir, VT_REDIS_TIMEOUT_MS="500", VT_REQUEST_TIMEOUT_MS="4000") as ingestor:
            device = 9_600_003
            token = ingestor.device(device)
            slot = ingestor.redis.keyslot(ingestor.shard_key(device))
            assert ingestor.post(token, {"t": 0}).status_code == 202
            seen: list[tuple[float, int | str]] = []
            stop = threading.Event()

            def post_forever():
                while not stop.is_set():
                    try:
                        status = ingestor.post(token, {"t": 1}, timeout=10).status_code
                    except requests.RequestException as exc:
                        status = type(exc).__name__
                    seen.append((time.monotonic(), status))
                    time.sleep(0.05)

            poster = threading.Thread(target=post_forever, daemon=True)
            poster.start()
            time.sleep(0.5)
            killed_at = time.monotonic()
            cluster.kill_master_of_slot(slot)
            # Still ready while one master is down: the other slots are served.
            poll(lambda: requests.get(f"http://127.0.0.1:{ingestor.http_port}/readyz", timeout=2).status_code == 200,
                 timeout=1.5, what="/readyz 200 with a master down")
            cluster.wait_slot_served(slot)
            promoted_at = time.monotonic()
            poll(lambda: any(t > promoted_at and s == 202 for t, s in seen), timeout=10,
                 what="a 202 after the replica's promotion")
            time.sleep(1)
            stop.set()
            poster.join(15)
            assert ingestor.proc.proc.poll() is None, "the ingestor exited"
            statuses = {s for _, s in seen}
            assert statuses <= {202, 503}, seen
            assert any(s == 503 for t, s in seen if t > killed_at), "no 503 while the slot had no master"
            recovered = min(t for t, s in seen if t > promoted_at and s == 202)
            assert recovered - promoted_at < 10
            assert [s for t, s in seen if t > recovered] == [202] * sum(1 for t, _ in seen if t > recovered)
    finally:
        cluster.stop()
