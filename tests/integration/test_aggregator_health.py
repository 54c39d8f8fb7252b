"""The aggregator's metrics port (VT_METRICS_PORT) also answers /healthz and /readyz, which the chart probes:
/healthz while the process serves, /readyz only while the dependencies of the process answer (the worker:
Postgres and Redis; beat: Redis), 503 with the error shape and Retry-After otherwise. /metrics is unchanged,
the worker's pool processes merged on it. Real Celery processes, real Postgres and Redis."""
from __future__ import annotations

import re
import socket
import threading
import time

import pytest
import requests

from stack.servers import Redis, free_port
from tests.conftest import poll
from tests.integration.api import create_device, send_readings

pytestmark = pytest.mark.integration

UNAVAILABLE = {"error": "unavailable", "details": []}


def _sample(base: str, name: str, **labels: str) -> float | None:
    text = requests.get(f"{base}/metrics", timeout=5).text
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            return float(m.group(2))
    return None


def _start(aggregator_factory, what: str, **env: str) -> str:
    """Start a worker or beat with its own metrics port; its base URL once the port answers /healthz."""
    port = free_port()
    agg = aggregator_factory(VT_METRICS_PORT=str(port), **env)
    proc = agg.start_worker() if what == "worker" else agg.start_beat()
    proc.wait_http(port, "/healthz", timeout=60)
    return f"http://127.0.0.1:{port}"


def _assert_unavailable(resp: requests.Response, message: str) -> None:
    assert resp.status_code == 503, resp.text
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json() == {**UNAVAILABLE, "message": message}
    assert int(resp.headers["Retry-After"]) > 0


def test_the_worker_should_answer_health_and_readiness_beside_its_merged_metrics(aggregator_factory, registry_url,
                                                                                  query_url):
    worker = _start(aggregator_factory, "worker")
    beat_port = free_port()
    aggregator_factory(VT_METRICS_PORT=str(beat_port)).start_beat()  # schedules the drains

    health = requests.get(f"{worker}/healthz", timeout=5)
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert health.headers["Content-Type"] == "application/json"
    ready = poll(lambda: (r := requests.get(f"{worker}/readyz", timeout=5)).status_code == 200 and r,
                 timeout=10, what="worker /readyz 200")
    assert ready.json() == {"status": "ready"}
    method = requests.post(f"{worker}/readyz", timeout=5)
    assert method.status_code == 405 and method.json()["error"] == "method_not_allowed"

    # /metrics as before: the multiprocess registry (no per-process collectors of the parent), the
    # aggregator's metrics, and counts made in the pool's children merged on the parent's port.
    metrics = requests.get(f"{worker}/metrics", timeout=5)
    assert metrics.status_code == 200 and metrics.headers["Content-Type"].startswith("text/plain")
    assert "visiontrack_aggregator_readings_total" in metrics.text
    assert "python_gc_objects_collected_total" not in metrics.text
    before = _sample(worker, "visiontrack_aggregator_readings_total", outcome="inserted") or 0.0
    device = create_device(registry_url, "health")
    now = int(time.time() * 1000)
    send_readings(query_url, device["id"], (now - 2000, 1.0), (now - 1000, 2.0))
    poll(lambda: (_sample(worker, "visiontrack_aggregator_readings_total", outcome="inserted") or 0) >= before + 2,
         timeout=30, what="the worker's children's inserts on its /metrics")
    assert requests.get(f"{worker}/metrics/anything", timeout=5).status_code == 200  # as prometheus_client serves


def test_beat_should_answer_health_and_readiness_too(aggregator_factory):
    beat = _start(aggregator_factory, "beat")
    assert requests.get(f"{beat}/healthz", timeout=5).json() == {"status": "ok"}
    poll(lambda: requests.get(f"{beat}/readyz", timeout=5).status_code == 200, timeout=10, what="beat /readyz 200")
    assert "visiontrack_aggregator_readings_total" in requests.get(f"{beat}/metrics", timeout=5).text


def test_a_worker_without_redis_should_live_but_not_be_ready(aggregator_factory):
    """Celery keeps retrying the broker, so the process starts and serves; it must say it is not ready."""
    worker = _start(aggregator_factory, "worker", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert requests.get(f"{worker}/healthz", timeout=5).status_code == 200
    _assert_unavailable(requests.get(f"{worker}/readyz", timeout=5), "not ready: redis unreachable")
    assert requests.get(f"{worker}/metrics", timeout=5).status_code == 200


def test_without_postgres_the_worker_should_not_be_ready_and_beat_should(aggregator_factory):
    """beat needs only the broker: a Postgres outage must not take it out of readiness."""
    closed = f"postgresql://visiontrack@127.0.0.1:{free_port()}/visiontrack"
    worker = _start(aggregator_factory, "worker", DATABASE_URL=closed)
    _assert_unavailable(requests.get(f"{worker}/readyz", timeout=5), "not ready: postgres unreachable")
    assert requests.get(f"{worker}/healthz", timeout=5).status_code == 200
    beat = _start(aggregator_factory, "beat", DATABASE_URL=closed)
    poll(lambda: requests.get(f"{beat}/readyz", timeout=5).status_code == 200, timeout=10, what="beat /readyz 200")


def test_readiness_should_follow_redis_down_and_up_while_liveness_stays(aggregator_factory, run_dir):
    own = Redis(run_dir / "redis-health", free_port(), run_dir / "logs" / "redis-health.log")
    own.start()
    try:
        worker = _start(aggregator_factory, "worker", REDIS_URL=own.url)
        poll(lambda: requests.get(f"{worker}/readyz", timeout=5).status_code == 200, timeout=15,
             what="ready with its Redis up")
        own.stop()
        # (a Response with a 4xx/5xx status is falsy, hence the list)
        [down] = poll(lambda: (r := requests.get(f"{worker}/readyz", timeout=5)).status_code == 503 and [r],
                      timeout=15, what="not ready once its Redis stopped")
        _assert_unavailable(down, "not ready: redis unreachable")
        assert requests.get(f"{worker}/healthz", timeout=5).status_code == 200
        own.start()
        poll(lambda: requests.get(f"{worker}/readyz", timeout=5).status_code == 200, timeout=15,
             what="ready again with its Redis back")
    finally:
        own.stop()


def test_a_check_should_give_up_within_its_timeout_on_a_server_that_never_answers():
    """In-process: a peer that accepts and then stays silent (a hung or half-open server) answers 503 in
    about the check timeout, instead of holding the probe."""
    from visiontrack import readiness as health

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list = []

    def accept_silently():
        try:
            for _ in range(4):
                held.append(listener.accept())
        except OSError:  # the listener closed at the end of the test
            pass

    threading.Thread(target=accept_silently, daemon=True).start()
    port = listener.getsockname()[1]
    config = type("Settings", (), {"database_url": f"postgresql://x@127.0.0.1:{port}/x",
                                   "redis_url": f"redis://127.0.0.1:{port}/0"})()
    readiness = health.Readiness(health.dependency_checks(config, "aggregator", ("postgres", "redis")))
    started = time.monotonic()
    try:
        assert readiness() == ["postgres unreachable", "redis unreachable"]
        assert time.monotonic() - started < 2 * health.CHECK_TIMEOUT_SECONDS + 1.5
        again = time.monotonic()
        assert readiness() == ["postgres unreachable", "redis unreachable"] and time.monotonic() - again < 0.5  # shared
    finally:
        listener.close()
        for conn, _ in held:
            conn.close()
