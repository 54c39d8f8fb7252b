"""The chart's HorizontalPodAutoscaler scales the ingestor up under load and back down when it ends
on CPU from metrics-server (the local cluster installs it; kind and minikube need it added). For a
test-sized load to cross the target, the target is lowered for the test's duration (an HPA-only change:
no pod restarts); the scale-down window is tests/cluster/values.yaml's 15 s."""
from __future__ import annotations

import subprocess
import threading
import time

import pytest
import requests

from tests.cluster.kube import HELM, NAMESPACE, RELEASE, ingress_url, kubectl, kubectl_json, release_tokens
from tests.cluster.prometheus import wait_until

TEST_TARGET = 10  # percent of the ingestor's CPU request
SENDERS = 4


def _metrics_api() -> bool:
    return kubectl("get", "apiservice", "v1beta1.metrics.k8s.io", "-o",
                   "jsonpath={.status.conditions[?(@.type=='Available')].status}", check=False).strip() == "True"


def _set_target(percent: int) -> None:
    done = subprocess.run([HELM, "upgrade", RELEASE, "charts/visiontrack", "-n", NAMESPACE, "--reset-then-reuse-values",
                           "--wait", "--timeout", "5m", "--set",
                           f"ingestor.autoscaling.targetCPUUtilizationPercentage={percent}"],
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr


def _target() -> int:
    return next(m["resource"]["target"]["averageUtilization"] for m in _hpa()["spec"]["metrics"]
                if m["type"] == "Resource" and m["resource"]["name"] == "cpu")


def _hpa() -> dict:
    return kubectl_json("-n", NAMESPACE, "get", "hpa", f"{RELEASE}-ingestor")


def _ready_ingestors() -> int:
    return kubectl_json("-n", NAMESPACE, "get", "deployment", f"{RELEASE}-ingestor")["status"].get("readyReplicas", 0)


def _cpu_measured() -> bool:
    return any(m.get("resource", {}).get("current", {}).get("averageUtilization") is not None
               for m in _hpa().get("status", {}).get("currentMetrics", []) or [])


@pytest.fixture
def low_target():
    if not _metrics_api():
        pytest.skip("the cluster serves no resource metrics (metrics.k8s.io): install metrics-server")
    configured = _target()
    _set_target(TEST_TARGET)
    yield
    _set_target(configured)


def test_the_ingestor_scales_up_under_load_and_back_down(low_target):
    wait_until(_cpu_measured, 120, "the ingestor's HPA reading CPU from metrics-server")
    admin, _ = release_tokens()
    url = ingress_url()
    device = requests.post(f"{url}/api/devices/", json={"name": f"hpa-{time.time_ns()}", "type": "hpa"},
                           headers={"Authorization": f"Bearer {admin}"}, timeout=10).json()
    stop = threading.Event()

    def send():
        body = [{"ts": int(time.time() * 1000) - 1000, "values": {f"m{i}": float(i) for i in range(20)}}]
        with requests.Session() as session:
            while not stop.is_set():
                session.post(f"{url}/api/ingest", json=body, timeout=10,
                             headers={"Authorization": f"Bearer {device['token']}"})

    base = _hpa()["spec"]["minReplicas"]
    wait_until(lambda: _ready_ingestors() == base, 120, f"the ingestor at its {base} replicas before the load")
    senders = [threading.Thread(target=send, daemon=True) for _ in range(SENDERS)]
    started = time.monotonic()
    for sender in senders:
        sender.start()
    try:
        wait_until(lambda: _ready_ingestors() > base, 240, f"more than {base} ingestors under load ({_hpa()['status']})")
        scaled_up = time.monotonic() - started
    finally:
        stop.set()
        for sender in senders:
            sender.join(timeout=30)
    stopped = time.monotonic()
    wait_until(lambda: _hpa()["status"].get("desiredReplicas") == base and _ready_ingestors() == base, 300,
               f"the ingestor back to {base} replicas")
    print(f"scaled up {scaled_up:.0f} s into the load; back to {base} replicas {time.monotonic() - stopped:.0f} s after it")
