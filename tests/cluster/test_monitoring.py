"""VisionTrack next to kube-prometheus-stack: the Prometheus Operator finds the release's ServiceMonitors
and PrometheusRule by their release label (no hand-written scrape config), every part's every replica
and both exporters are scraped, the rules load without errors, alerts fire, reach Alertmanager and its
receivers, and resolve (a part scaled to zero, a burst of ingest errors), and every query of both
dashboards returns data from the cluster's Prometheus and Postgres."""
from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from stack import dashboards, snapshot
from tests.cluster.kube import K8S_CLUSTER, NAMESPACE, RELEASE, ServiceAddress, ingress_url, kubectl, kubectl_json, \
    node_address, release_tokens
from tests.cluster.prometheus import MONITORING_NAMESPACE, STACK_RELEASE, Alertmanager, Prometheus, \
    release_rules, wait_until
from tests.receiver import Receiver
from tests.traffic import Endpoints, register, send_round

PARTS = ("ingestor", "registry", "query", "worker", "beat")
EXPORTERS = ("postgres", "redis")
RECEIVER_CONFIG = "visiontrack-test-receiver"
SNAPSHOTS = Path(__file__).resolve().parents[2] / "run" / "dashboards-cluster"


@pytest.fixture(scope="module")
def prometheus():
    api = Prometheus()
    yield api
    api.close()


def _pods_of(component: str) -> int:
    return len(kubectl("-n", NAMESPACE, "get", "pods", "--field-selector=status.phase=Running", "-o", "name",
                       "-l", f"app.kubernetes.io/component={component},app.kubernetes.io/instance={RELEASE}").split())


def test_the_operator_selects_every_servicemonitor_and_every_target_is_up(prometheus):
    selected = kubectl_json("-n", NAMESPACE, "get", "servicemonitors", "-l", f"release={STACK_RELEASE}")["items"]
    names = {m["metadata"]["name"] for m in selected}
    assert names == {f"{RELEASE}-{c}" for c in PARTS + EXPORTERS}

    def all_up():
        pools = prometheus.pools()
        missing = {}
        for component in PARTS + EXPORTERS:
            targets = pools.get(f"serviceMonitor/{NAMESPACE}/{RELEASE}-{component}/0", [])
            up = [t for t in targets if t["health"] == "up"]
            if len(up) != _pods_of(component) or len(up) != len(targets):
                missing[component] = [(t["labels"].get("pod"), t["health"], t["lastError"]) for t in targets]
        return not missing or None, missing

    # The Operator writes the scrape config to a Secret at once, but the kubelet refreshes a mounted Secret
    # only on the pod's next sync (its sync period, a minute, plus its cache), and the reloader follows:
    # two minutes has been seen once in a while with the release just installed.
    wait_until(lambda: all_up()[0], 240, f"every target up (not yet: {all_up()[1]})")
    jobs = {s["metric"]["job"] for s in prometheus.query(f'up{{namespace="{NAMESPACE}"}} == 1')}
    assert jobs == {f"visiontrack-{p}" for p in PARTS} | {f"visiontrack-{e}-exporter" for e in EXPORTERS}


def test_the_rules_are_loaded_and_evaluate_without_errors(prometheus):
    shipped = release_rules()

    def loaded():
        groups = {g["name"]: g for g in prometheus.get("/api/v1/rules")["groups"] if g["name"] in shipped}
        return groups if len(groups) == len(shipped) else None

    groups = wait_until(loaded, 120, "the release's rule groups loaded by Prometheus")
    for name, rules in shipped.items():
        assert [r["name"] for r in groups[name]["rules"]] == rules
        broken = [(r["name"], r.get("lastError")) for r in groups[name]["rules"] if r["health"] != "ok"]
        assert broken == [], f"group {name}: rules not healthy: {broken}"


# --- alerts through Alertmanager to a receiver ----------------------------------------------------

@pytest.fixture(scope="module")
def alert_receiver():
    """A webhook receiver on this machine and an AlertmanagerConfig routing VisionTrack's alerts to it
    (kube-prometheus-stack selects it by label: k8s/local/kube-prometheus-stack-values.yaml). The pods
    reach this machine on the local cluster only; elsewhere the alerts are checked in Alertmanager."""
    if K8S_CLUSTER != "local":
        yield None
        return
    receiver = Receiver(node_address())
    kubectl("apply", "-f", "-", input=json.dumps(_receiver_config(receiver.url("/alertmanager"))))
    alertmanager = Alertmanager()
    wait_until(lambda: RECEIVER_CONFIG in alertmanager.get("/api/v2/status")["config"]["original"], 180,
               "Alertmanager configured with the test receiver")
    yield receiver
    alertmanager.close()
    kubectl("-n", MONITORING_NAMESPACE, "delete", "alertmanagerconfig", RECEIVER_CONFIG, "--ignore-not-found")
    receiver.shutdown()


def _receiver_config(url: str) -> dict:
    return {
        "apiVersion": "monitoring.coreos.com/v1alpha1", "kind": "AlertmanagerConfig",
        "metadata": {"name": RECEIVER_CONFIG, "namespace": MONITORING_NAMESPACE,
                     "labels": {"visiontrack.io/test-receiver": "true"}},
        "spec": {
            "route": {"receiver": "webhook", "groupBy": ["alertname", "job", "namespace"], "groupWait": "5s",
                      "groupInterval": "10s", "repeatInterval": "1h",
                      "matchers": [{"name": "alertname", "value": "VisionTrack.+", "matchType": "=~"}]},
            "receivers": [{"name": "webhook", "webhookConfigs": [{"url": url, "sendResolved": True}]}],
        },
    }


def _notified(receiver: Receiver | None, status: str, alertname: str, **labels: str) -> bool:
    """Whether the receiver got a notification of that alert in that status; without a receiver, whether
    Alertmanager holds the alert (firing) or no longer holds it (resolved)."""
    if receiver is None:
        alertmanager = Alertmanager()
        try:
            held = [a for a in alertmanager.get("/api/v2/alerts") if a["labels"].get("alertname") == alertname
                    and all(a["labels"].get(k) == v for k, v in labels.items())]
        finally:
            alertmanager.close()
        return bool(held) == (status == "firing")
    return any(a["status"] == status and a["labels"].get("alertname") == alertname
               and all(a["labels"].get(k) == v for k, v in labels.items())
               for call in receiver.on("/alertmanager") for a in call["body"]["alerts"])


def _scale(component: str, replicas: int) -> None:
    kubectl("-n", NAMESPACE, "scale", f"deployment/{RELEASE}-{component}", f"--replicas={replicas}")


def test_a_part_scaled_to_zero_fires_its_down_alert_and_scaling_back_resolves_it(prometheus, alert_receiver):
    down = {"alertname": "VisionTrackPartDown", "job": "visiontrack-query", "namespace": NAMESPACE}
    _scale("query", 0)
    try:
        wait_until(lambda: prometheus.firing(**down), 180, "VisionTrackPartDown firing for query")
        wait_until(lambda: _notified(alert_receiver, "firing", **down), 120, "the firing alert received")
    finally:
        _scale("query", 1)
    kubectl("-n", NAMESPACE, "rollout", "status", f"deployment/{RELEASE}-query", "--timeout=180s", timeout=200)
    wait_until(lambda: not prometheus.firing(**down), 180, "VisionTrackPartDown resolved")
    wait_until(lambda: _notified(alert_receiver, "resolved", **down), 120, "the resolved alert received")


def _pause_redis_writes(seconds: int) -> None:
    """Redis stops serving writes for a while (CLIENT PAUSE WRITE): the ingestor answers 503."""
    kubectl("-n", NAMESPACE, "exec", f"{RELEASE}-redis-0", "-c", "redis", "--", "sh", "-c",
            f'REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli CLIENT PAUSE {seconds * 1000} WRITE')


def _resume_redis_writes() -> None:
    kubectl("-n", NAMESPACE, "exec", f"{RELEASE}-redis-0", "-c", "redis", "--", "sh", "-c",
            'REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli CLIENT UNPAUSE')


def test_a_burst_of_ingest_errors_fires_the_error_rate_alert(prometheus, alert_receiver):
    errors = {"alertname": "VisionTrackIngestErrors", "namespace": NAMESPACE}
    admin, _ = release_tokens()
    url = ingress_url()
    device = requests.post(f"{url}/api/devices/", json={"name": f"burst-{time.time_ns()}", "type": "burst"},
                           headers={"Authorization": f"Bearer {admin}"}, timeout=10).json()
    stop = threading.Event()
    answers: list[int] = []

    def send():
        with requests.Session() as session:
            while not stop.is_set():
                resp = session.post(f"{url}/api/ingest", json={"values": {"burst": 1.0}}, timeout=15,
                                    headers={"Authorization": f"Bearer {device['token']}"})
                answers.append(resp.status_code)
                time.sleep(0.05)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    _pause_redis_writes(120)
    try:
        wait_until(lambda: prometheus.firing(**errors), 180, "VisionTrackIngestErrors firing")
        wait_until(lambda: _notified(alert_receiver, "firing", **errors), 120, "the error alert received")
    finally:
        _resume_redis_writes()
        stop.set()
        sender.join(timeout=30)
    assert 503 in answers and set(answers) <= {202, 503}, sorted(set(answers))


# --- the dashboards' queries ----------------------------------------------------------------------

def _postgres_dsn() -> tuple[ServiceAddress, str]:
    """The in-chart Postgres as this machine reaches it, and a DSN with the release's credentials."""
    secret = kubectl_json("-n", NAMESPACE, "get", "secret", f"{RELEASE}-secrets")["data"]
    url = urlsplit(base64.b64decode(secret["DATABASE_URL"]).decode())
    address = ServiceAddress(NAMESPACE, f"{RELEASE}-postgres", 5432)
    return address, url._replace(netloc=f"{url.username}:{url.password}@{address.host}:{address.port}").geturl()


def test_every_dashboard_query_returns_data_after_a_minute_of_traffic(prometheus):
    """Every query of both dashboards (Prometheus panels with the dashboards' variables, Postgres panels
    with Grafana's macros substituted), run as Grafana would against the cluster's Prometheus and
    Postgres, returns data after a minute of traffic through the ingress."""
    admin, _ = release_tokens()
    url = ingress_url()
    api = Endpoints(f"{url}/api/ingest", url, url, admin)
    devices, _ = register(api, f"dashboards-{time.time_ns() % 10**8}")
    now_ms = int(time.time() * 1000)
    for round_ in range(6):
        send_round(api, devices, now_ms, round_ * 500)
        time.sleep(10)
    address, dsn = _postgres_dsn()
    sources = dashboards.Sources(prometheus=prometheus.url, postgres=dsn, prometheus_interval="10s")
    given = {"namespace": NAMESPACE, "device": str(devices[0]["id"])}
    try:
        missing = {name: dashboards.no_data(dashboards.run_until_data(board, sources, given, timeout=120))
                   for name, board in dashboards.shipped().items()}
        # The dashboards as the cluster's data draws them, to look at (make dashboard-snapshot's drawing).
        for board in dashboards.shipped().values():
            snapshot.snapshot(board, sources, SNAPSHOTS, given)
    finally:
        address.close()
    assert not any(missing.values()), "\n".join(f"{name}: {line}" for name, lines in missing.items() for line in lines)
