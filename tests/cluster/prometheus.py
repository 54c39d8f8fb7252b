"""kube-prometheus-stack on the cluster, as the tests see it: its Prometheus and Alertmanager APIs, the
Operator's selection label, and the rules file the chart ships."""
from __future__ import annotations

import time

import pytest
import requests

from tests.cluster.kube import NAMESPACE, RELEASE, ServiceAddress, kubectl, kubectl_json

MONITORING_NAMESPACE = "monitoring"
# kube-prometheus-stack's release name: its Prometheus selects ServiceMonitors and rules labelled so.
STACK_RELEASE = "kube-prometheus-stack"


def stack_installed() -> bool:
    return bool(kubectl("-n", MONITORING_NAMESPACE, "get", "service", f"{STACK_RELEASE}-prometheus",
                        "--ignore-not-found", "-o", "name").strip())


class Api:
    """A Prometheus-style HTTP API reached from this machine."""

    def __init__(self, service: str, port: int):
        if not stack_installed():
            pytest.skip("kube-prometheus-stack is not installed in the namespace monitoring (make monitoring)")
        self.address = ServiceAddress(MONITORING_NAMESPACE, service, port)
        self.url = self.address.url

    def get(self, path: str, **params) -> dict | list:
        resp = requests.get(f"{self.url}{path}", params=params, timeout=15)
        resp.raise_for_status()
        body = resp.json()
        return body["data"] if isinstance(body, dict) and "data" in body else body

    def close(self) -> None:
        self.address.close()


class Prometheus(Api):
    def __init__(self):
        super().__init__(f"{STACK_RELEASE}-prometheus", 9090)

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]

    def pools(self) -> dict[str, list[dict]]:
        """Active targets by scrape pool."""
        pools: dict[str, list[dict]] = {}
        for target in self.get("/api/v1/targets", state="active")["activeTargets"]:
            pools.setdefault(target["scrapePool"], []).append(target)
        return pools

    def firing(self, alertname: str, **labels: str) -> list[dict]:
        return [a for a in self.get("/api/v1/alerts")["alerts"]
                if a["labels"].get("alertname") == alertname and a["state"] == "firing"
                and all(a["labels"].get(k) == v for k, v in labels.items())]


class Alertmanager(Api):
    def __init__(self):
        super().__init__(f"{STACK_RELEASE}-alertmanager", 9093)


def release_rules() -> dict[str, list[str]]:
    """The release's PrometheusRule as the cluster holds it: group name -> its rules' names."""
    rule = kubectl_json("-n", NAMESPACE, "get", "prometheusrule", f"{RELEASE}-monitoring")
    return {g["name"]: [r.get("alert") or r["record"] for r in g["rules"]] for g in rule["spec"]["groups"]}


def wait_until(check, timeout: float, what: str, interval: float = 2.0):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)
