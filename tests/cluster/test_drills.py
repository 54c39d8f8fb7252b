"""Drills on the cluster under a steady ingest load through the ingress controller: a pod of each part is
deleted in turn (forced, no grace: as a node losing it), then every Deployment is restarted (a node being
drained). Every reading answered 202 must be stored exactly once, and a request may be refused only
with 503 and Retry-After. The time until each part was back is printed as a table."""
from __future__ import annotations

import os
import time

from tests.cluster.kube import NAMESPACE, RELEASE, ingress_url, kubectl, kubectl_json, release_tokens
from tests.cluster.prometheus import wait_until
from tests.load import LoadGenerator

RATE = float(os.environ.get("VT_TEST_LOAD_RATE", "200"))  # readings/s
PODS = ("ingestor", "registry", "query", "worker", "beat", "postgres", "redis")


def _pods(component: str) -> list[dict]:
    return kubectl_json("-n", NAMESPACE, "get", "pods",
                        "-l", f"app.kubernetes.io/component={component},app.kubernetes.io/instance={RELEASE}")["items"]


def _ready(pod: dict) -> bool:
    return not pod["metadata"].get("deletionTimestamp") and any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def _kill_one(component: str) -> float:
    """Delete a pod of the component with no grace; return the seconds until its replacement is Ready
    (a pod that did not exist before; a StatefulSet's keeps the name, not the uid)."""
    before = {p["metadata"]["uid"] for p in _pods(component)}
    victim = _pods(component)[0]["metadata"]
    started = time.monotonic()
    kubectl("-n", NAMESPACE, "delete", "pod", victim["name"], "--grace-period=0", "--force", "--wait=false")
    wait_until(lambda: any(_ready(p) and p["metadata"]["uid"] not in before for p in _pods(component)), 300,
               f"{component} back after its pod was deleted", interval=0.5)
    return time.monotonic() - started


def _restart_all() -> float:
    started = time.monotonic()
    kubectl("-n", NAMESPACE, "rollout", "restart", "deployment")
    for deployment in kubectl("-n", NAMESPACE, "get", "deployments", "-o", "name").split():
        kubectl("-n", NAMESPACE, "rollout", "status", deployment, "--timeout=300s", timeout=330)
    return time.monotonic() - started


def test_every_part_killed_in_turn_and_every_deployment_restarted_under_load():
    # The ingestor runs two pods (the chart's default): one lost leaves the other serving.
    wait_until(lambda: sum(_ready(p) for p in _pods("ingestor")) >= 2, 120, "two ingestors Ready")
    admin, reader = release_tokens()
    load = LoadGenerator(ingress_url(), admin, devices=4, rate=RATE, batch=2).start()
    back: dict[str, float] = {}
    try:
        time.sleep(5)
        for component in PODS:
            back[component] = _kill_one(component)
            time.sleep(5)  # the load meets the part back before the next one goes
        back["every Deployment restarted"] = _restart_all()
        time.sleep(5)
    finally:
        load.stop()
    summary = load.verify(reader, timeout=240)
    print("\n| pod deleted (forced, no grace) | back (Ready) after |\n| --- | --- |")
    for what, seconds in back.items():
        print(f"| {what} | {seconds:.1f} s |")
    print(summary.line())
    assert summary.ok, summary.report()
