"""The test harness: real Postgres, Redis, gunicorn, Celery and nginx on free ports, started per session.

Layers (markers): unit (no servers), integration (real servers and processes), e2e (over HTTP through
nginx, routed like the Ingress; or through a deployment's ingress, see tests/e2e/conftest.py), chart (the
Helm chart, rendered and validated offline), bench (the benchmark harnesses at toy sizes), drill (faults
under load on a stack of their own, see tests/drills/conftest.py).
"""
from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stack.nginx import Nginx  # noqa: E402
from stack.replicated import PostgresPair, RedisCluster  # noqa: E402
from stack.servers import Postgres, Redis, free_port, scratch_dir  # noqa: E402
from stack.services import INGESTOR_BINARY, Process  # noqa: E402

# tests/cluster runs against a live cluster, from `make test-cluster` (VT_CLUSTER_TESTS=1), never in `make test`.
collect_ignore = [] if os.environ.get("VT_CLUSTER_TESTS") else ["cluster"]
# Which engines the session's services run on (`make test-scale` sets "replicated"): one Postgres and one Redis,
# or a Redis Cluster (3 masters, a replica each; Celery's broker on a plain Redis of its own) and a Postgres
# primary with a synchronous standby that the query service reads from. tests/scale runs only then.
BACKENDS = os.environ.get("VT_TEST_BACKENDS", "single")
if BACKENDS not in ("single", "replicated"):
    raise pytest.UsageError(f"VT_TEST_BACKENDS must be single or replicated, got {BACKENDS!r}")
REPLICATED = BACKENDS == "replicated"
if not REPLICATED:
    collect_ignore.append("scale")
SCALE_SHARDS = 6  # stream shards on the Redis Cluster: two per master on average

ADMIN_TOKEN = "test-admin-token-0123456789"
READER_TOKEN = "test-reader-token-0123456789"


# The marker of each folder's tests (pytest.ini describes them).
LAYER_MARKERS = {"unit": "unit", "contract": "unit", "integration": "integration", "e2e": "e2e", "chart": "chart",
                 "bench": "bench", "drills": "drill", "scale": "scale"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        layer = Path(item.fspath).relative_to(ROOT / "tests").parts[0]
        if layer in LAYER_MARKERS:
            item.add_marker(getattr(pytest.mark, LAYER_MARKERS[layer]))


def poll(check: Callable[[], object], timeout: float = 15.0, interval: float = 0.05, what: str = "condition"):
    """Call `check` until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="session")
def run_dir():
    # Not pytest's tmp_path: Postgres runs as its own user and must reach its data folder.
    return scratch_dir("vt-test-")


@pytest.fixture(scope="session")
def postgres_pair(run_dir):
    """The replicated backends' Postgres primary and synchronous standby; None on the single backends."""
    if not REPLICATED:
        yield None
        return
    pair = PostgresPair(run_dir / "pg-pair")
    pair.start()
    yield pair
    pair.stop()


@pytest.fixture(scope="session")
def postgres(run_dir, postgres_pair):
    """The Postgres the session's services write to (the primary, on the replicated backends)."""
    if postgres_pair is not None:
        yield postgres_pair.primary
        return
    server = Postgres(run_dir / "pg", free_port(), run_dir / "logs" / "postgres.log", fast_and_loose=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(run_dir):
    """The replicated backends' Redis Cluster; None on the single backends."""
    if not REPLICATED:
        yield None
        return
    cluster = RedisCluster(run_dir / "redis-cluster")
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_server(run_dir):
    """A plain Redis: the stream, token index and broker; on the replicated backends, the broker only."""
    server = Redis(run_dir / "redis", free_port(), run_dir / "logs" / "redis.log")
    server.start()
    yield server
    server.stop()


def backend_env(postgres, redis_server, postgres_pair, redis_cluster) -> dict[str, str]:
    """The settings naming the session's engines."""
    if not REPLICATED:
        return {"DATABASE_URL": postgres.url, "REDIS_URL": redis_server.url}
    return {"DATABASE_URL": postgres_pair.write_url, "VT_DATABASE_READ_URL": postgres_pair.read_url,
            "REDIS_URL": redis_cluster.url, "VT_REDIS_CLUSTER": "true", "VT_BROKER_URL": redis_server.url,
            "VT_STREAM_SHARDS": str(SCALE_SHARDS)}


@pytest.fixture(scope="session")
def base_env(postgres, redis_server, postgres_pair, redis_cluster, run_dir) -> dict[str, str]:
    env = {
        **backend_env(postgres, redis_server, postgres_pair, redis_cluster),
        "VT_ADMIN_TOKENS": ADMIN_TOKEN,
        "VT_READER_TOKENS": READER_TOKEN,
        "VT_LOG_LEVEL": "info",
        "VT_HTTP_WORKERS": "2",
        "VT_METRICS_PORT": "0",
        "VT_BEAT_SCHEDULE_FILE": str(run_dir / "beat-schedule"),
    }
    Process("migrate", "migrate", env, run_dir / "logs" / "migrate.log").run_to_end(run_dir)
    return env


@pytest.fixture(scope="session")
def db(postgres, base_env):
    import psycopg2

    conn = psycopg2.connect(postgres.url)
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def redis_client(redis_server):
    import redis

    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


def web_process_name(part: str, url: str) -> str:
    """The name `_web` gives the process serving `url`. One per process: it names the directory of the
    process's Prometheus files, which a start empties, so two services sharing one lose each other's metrics."""
    return f"{part}-{url.rsplit(':', 1)[1]}"


def _web(part: str, base_env: dict, run_dir: Path, **extra_env: str) -> tuple[Process, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**base_env, "VT_HTTP_BIND": f"127.0.0.1:{port}", **extra_env}
    name = web_process_name(part, url)
    proc = Process(name, part, env, run_dir / "logs" / f"{name}.log").start(run_dir)
    proc.wait_http(port)
    return proc, url


@pytest.fixture(scope="session")
def registry_url(base_env, run_dir):
    proc, url = _web("registry", base_env, run_dir)
    yield url
    proc.stop()


@pytest.fixture(scope="session")
def query_url(base_env, run_dir):
    proc, url = _web("query", base_env, run_dir)
    yield url
    proc.stop()


class Aggregator:
    """A real Celery worker and beat, with their own Redis database (broker and stream) when asked."""

    def __init__(self, base_env: dict, run_dir: Path, **env: str):
        self.tag = uuid.uuid4().hex[:8]
        self.env = {**base_env, "VT_BEAT_SCHEDULE_FILE": str(run_dir / f"beat-{self.tag}"),
                    "VT_DRAIN_INTERVAL_SECONDS": "0.5", "VT_TRIM_INTERVAL_SECONDS": "1", **env}
        self.run_dir = run_dir
        self.worker: Process | None = None
        self.beat: Process | None = None

    def start_worker(self, *args: str) -> Process:
        self.worker = Process(f"worker-{self.tag}", "worker", self.env,
                              self.run_dir / "logs" / f"worker-{self.tag}.log", extra_args=list(args))
        return self.worker.start(self.run_dir)

    def start_beat(self) -> Process:
        self.beat = Process(f"beat-{self.tag}", "beat", self.env, self.run_dir / "logs" / f"beat-{self.tag}.log")
        return self.beat.start(self.run_dir)

    def start(self) -> "Aggregator":
        self.start_worker()
        self.start_beat()
        return self

    def stop(self) -> None:
        for proc in (self.beat, self.worker):
            if proc:
                proc.stop()


@pytest.fixture
def aggregator_factory(base_env, run_dir):
    started: list[Aggregator] = []

    def make(**env: str) -> Aggregator:
        agg = Aggregator(base_env, run_dir, **env)
        started.append(agg)
        return agg

    yield make
    for agg in started:
        agg.stop()


def listen_port(proc: Process) -> int:
    """The port a process started by these fixtures listens on (the ingestor's VT_LISTEN_ADDR)."""
    return int(proc.env["VT_LISTEN_ADDR"].rsplit(":", 1)[1])


@pytest.fixture(scope="session")
def ingestor_process(base_env, run_dir):
    """The session's ingestor. Drills may stop it and start it again (`start(run_dir)`, then
    `wait_http(listen_port(proc))`): same environment, same port, so nginx finds it again."""
    if not INGESTOR_BINARY.exists():
        pytest.skip(f"ingestor binary not built ({INGESTOR_BINARY}); run `make ingestor-build`")
    port = free_port()
    env = {**base_env, "VT_LISTEN_ADDR": f"127.0.0.1:{port}"}
    proc = Process("ingestor", "ingestor", env, run_dir / "logs" / "ingestor.log").start(run_dir)
    proc.wait_http(port)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def ingestor_url(ingestor_process):
    return f"http://127.0.0.1:{listen_port(ingestor_process)}"


@pytest.fixture(scope="session")
def nginx_ingress(request, registry_url, query_url, run_dir):
    """nginx routing the Ingress paths; includes the ingestor when it is built. The e2e tests reach it
    through their `ingress` fixture (tests/e2e/conftest.py), which can point at a deployment instead."""
    ports = {"registry": int(registry_url.rsplit(":", 1)[1]), "query": int(query_url.rsplit(":", 1)[1])}
    if INGESTOR_BINARY.exists():
        ports["ingestor"] = int(request.getfixturevalue("ingestor_url").rsplit(":", 1)[1])
    server = Nginx(free_port(), ports, run_dir / "nginx", run_dir / "logs")
    server.start()
    yield server.url
    server.stop()
