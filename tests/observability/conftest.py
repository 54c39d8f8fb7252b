"""The observability layer's fixtures: the whole system on free ports with Prometheus (Debian's) scraping
every process and both exporters, the chart's rules loaded, and traffic flowing through every path the
dashboards and alerts look at.

`monitored` starts, once per session: registry and query (gunicorn, 2 workers, multiprocess metrics), the
ingestor when it is built, a Celery worker with 3 pool processes and beat (each serving /metrics on its own
port), the Redis and Postgres exporters, and Prometheus scraping them every second and evaluating the
rules every second. Every target carries a `namespace` label, as a ServiceMonitor's targets do in a cluster,
so the overview's namespace variable and filters work here as there. `traffic` then drives it, after
Prometheus' first scrape and twice over (so every rate has an increase to show): devices registered,
readings accepted through both writers, requests rejected for several reasons, a batch resent
(duplicates), a poison entry (a dead letter), reads through both APIs, and a device alert rule that fires.
"""
from __future__ import annotations

import json
import shutil
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stack import dashboards
from stack import prometheus as prom
from stack.servers import free_port
from stack.services import INGESTOR_BINARY, Process
from tests.conftest import ADMIN_TOKEN, poll, web_process_name
from tests.traffic import Endpoints, register, send_round

ROOT = Path(__file__).resolve().parents[2]
FILES = ROOT / "charts" / "visiontrack" / "files"
RULES = FILES / "prometheus" / "rules.yaml"
RULE_TESTS = FILES / "prometheus" / "rules.test.yaml"
DASHBOARDS = dashboards.DASHBOARDS
RUNBOOK = ROOT / "docs" / "runbook.md"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# The namespace label of every target here (in a cluster: the release's namespace).
NAMESPACE = "visiontrack-obs"
SCRAPE_INTERVAL = "1s"


def need(binary: str) -> str:
    found = shutil.which(binary)
    if not found:
        pytest.skip(f"{binary} not installed (scripts/install-deps.sh)")
    return found


@dataclass
class Monitored:
    prometheus: str
    targets: dict[str, str]  # job -> base URL of its /metrics
    worker: Process
    worker_metrics: str
    database_url: str
    multiproc_dirs: dict[str, Path] = field(default_factory=dict)

    @property
    def sources(self) -> dashboards.Sources:
        """Where the dashboards' queries go: this Prometheus (its scrape interval is Grafana's minimum
        interval) and the Postgres the parts write to."""
        return dashboards.Sources(prometheus=self.prometheus, postgres=self.database_url,
                                  prometheus_interval=SCRAPE_INTERVAL)

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr}
        if at is not None:
            params["time"] = str(at)
        with urllib.request.urlopen(f"{self.prometheus}/api/v1/query?{urllib.parse.urlencode(params)}",
                                    timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def api(self, path: str) -> dict:
        with urllib.request.urlopen(f"{self.prometheus}{path}", timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]


@pytest.fixture(scope="session")
def monitored(request, base_env, run_dir, registry_url, query_url):
    for binary in ("prometheus", "promtool", "prometheus-redis-exporter", "prometheus-postgres-exporter"):
        need(binary)
    logs = run_dir / "logs"
    started: list = []
    targets = {"visiontrack-registry": registry_url, "visiontrack-query": query_url}
    if INGESTOR_BINARY.exists():
        targets["visiontrack-ingestor"] = request.getfixturevalue("ingestor_url")
    worker_port, beat_port = free_port(), free_port()
    agg_env = {**base_env, "VT_WORKER_CONCURRENCY": "3", "VT_DRAIN_INTERVAL_SECONDS": "0.5",
               "VT_TRIM_INTERVAL_SECONDS": "1", "VT_ALERT_EVAL_SECONDS": "1",
               "VT_BEAT_SCHEDULE_FILE": str(run_dir / "beat-observability")}
    worker = Process("worker-obs", "worker", {**agg_env, "VT_METRICS_PORT": str(worker_port)},
                     logs / "worker-obs.log").start(run_dir)
    started.append(worker)
    worker.wait_http(worker_port, "/metrics", timeout=60)
    beat = Process("beat-obs", "beat", {**agg_env, "VT_METRICS_PORT": str(beat_port)}, logs / "beat-obs.log").start(run_dir)
    started.append(beat)
    beat.wait_http(beat_port, "/metrics", timeout=60)
    targets["visiontrack-worker"] = f"http://127.0.0.1:{worker_port}"
    targets["visiontrack-beat"] = f"http://127.0.0.1:{beat_port}"
    redis_exp = prom.redis_exporter(free_port(), base_env["REDIS_URL"], "vt:telemetry", logs / "redis-exporter.log")
    pg_exp = prom.postgres_exporter(free_port(), base_env["DATABASE_URL"], logs / "postgres-exporter.log")
    for daemon in (redis_exp, pg_exp):
        started.append(daemon.start())
    targets["visiontrack-redis-exporter"] = redis_exp.url
    targets["visiontrack-postgres-exporter"] = pg_exp.url
    prom_port = free_port()
    scrape = {job: [url.removeprefix("http://")] for job, url in targets.items()}
    daemon = prom.prometheus(prom_port, run_dir / "prometheus", scrape, logs / "prometheus.log",
                             interval=SCRAPE_INTERVAL, evaluation="1s")
    _label_every_target(run_dir / "prometheus" / "prometheus.yml", {"namespace": NAMESPACE})
    server = prom.start_prometheus(daemon)
    started.append(server)
    try:
        yield Monitored(server.url, targets, worker, targets["visiontrack-worker"], base_env["DATABASE_URL"],
                        {"query": run_dir / "metrics" / web_process_name("query", query_url),
                         "registry": run_dir / "metrics" / web_process_name("registry", registry_url),
                         "worker": run_dir / "metrics" / "worker-obs"})
    finally:
        for proc in reversed(started):
            proc.stop()


def _label_every_target(config: Path, labels: dict[str, str]) -> None:
    """Add target labels to the generated prometheus.yml (a comment line, then JSON), as a cluster's
    Prometheus gives a ServiceMonitor's targets their namespace."""
    comment, _, body = config.read_text().partition("\n")
    conf = json.loads(body)
    for job in conf["scrape_configs"]:
        for static in job["static_configs"]:
            static["labels"] = {**static.get("labels", {}), **labels}
    config.write_text(f"{comment}\n{json.dumps(conf, indent=2)}\n")


@dataclass
class Traffic:
    devices: list[dict]
    ingest_url: str  # /api/ingest of the ingestor, or POST /api/telemetry/ when it is not built


@pytest.fixture(scope="session")
def traffic(monitored, registry_url, query_url, redis_client, db) -> Traffic:
    """Drive every path the dashboards and alerts look at, then wait until Prometheus has seen it."""
    # Only after Prometheus' first scrape of every target: a counter already at its final value when first
    # scraped shows no increase, so every rate (and latency quantile) of the dashboards would be empty.
    poll(lambda: len(monitored.query("up == 1")) == len(monitored.targets), timeout=30, interval=0.2,
         what="a first scrape of every target")
    ingest_url = (monitored.targets["visiontrack-ingestor"] + "/api/ingest"
                  if "visiontrack-ingestor" in monitored.targets else f"{query_url}/api/telemetry/")
    api = Endpoints(ingest_url, registry_url, query_url, ADMIN_TOKEN)
    devices, _ = register(api, f"obs-{str(time.time_ns())[-8:]}")
    now_ms = int(time.time() * 1000)
    send_round(api, devices, now_ms, 0)
    # a poison entry written around the writers: the aggregator dead-letters it
    redis_client.xadd("vt:telemetry", {"v": "1", "d": "not-a-device", "r": "[]", "at": str(now_ms)})
    # Again a few scrapes later (its resent reading a duplicate now): a series born in the first round (a
    # route's first request) was first scraped with its count already in, so only a later increase gives
    # it a rate (and a latency quantile).
    time.sleep(2.5)
    send_round(api, devices, now_ms, 500)

    def stored() -> bool:
        with db.cursor() as cur:
            cur.execute("SELECT count(*) FROM telemetry_1m WHERE device_id = ANY(%s)", ([d["id"] for d in devices],))
            rollups = cur.fetchone()[0]
            cur.execute("SELECT count(*) FROM alert_events WHERE device_id = %s", (devices[0]["id"],))
            alerts = cur.fetchone()[0]
        return rollups > 0 and alerts > 0

    poll(stored, timeout=60, what="readings in the rollups and the device alert fired")
    # Prometheus has scraped the aftermath (a few scrapes, so rates have two points)
    poll(lambda: monitored.query('sum(visiontrack_aggregator_dead_letters_total) > 0')
         and monitored.query('sum(visiontrack_aggregator_readings_total{outcome="duplicate"}) > 0')
         and monitored.query('sum(visiontrack_aggregator_alerts_total{state="firing"}) > 0'),
         timeout=60, what="dead letter, duplicates and device alert in Prometheus")
    time.sleep(3)
    return Traffic(devices, ingest_url)


# The chart layer's fixtures, for the chart's monitoring objects (test_chart.py).
from tests.chart.helpers import helm, render  # noqa: E402,F401
