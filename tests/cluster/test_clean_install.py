"""A clean install, checked right after `helm install --wait` and `helm test`: every pod of the
cluster is Running and ready (or Completed), none has restarted, and no part of the release logged a
missing table — the parts wait for the schema instead of failing on it."""
from __future__ import annotations

from tests.cluster.kube import NAMESPACE, kubectl, kubectl_json

# What Postgres says when a part queries a table the migration has not created yet.
MISSING_TABLE = "does not exist"


def _pods() -> list[dict]:
    return kubectl_json("get", "pods", "--all-namespaces")["items"]


def _name(pod: dict) -> str:
    return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"


def _statuses(pod: dict) -> list[dict]:
    status = pod.get("status", {})
    return status.get("initContainerStatuses", []) + status.get("containerStatuses", [])


def test_every_pod_is_running_and_ready_or_completed():
    unhealthy = []
    for pod in _pods():
        phase = pod.get("status", {}).get("phase")
        if phase == "Succeeded":
            continue
        ready = all(status.get("ready") for status in pod["status"].get("containerStatuses", []))
        if phase != "Running" or not ready:
            unhealthy.append(f"{_name(pod)}: {phase}, ready={ready}")
    assert not unhealthy, "pods not Running and ready nor Completed:\n" + "\n".join(unhealthy)


def test_no_container_has_restarted():
    restarted = [
        f"{_name(pod)} {status['name']}: {status['restartCount']} restarts"
        for pod in _pods()
        for status in _statuses(pod)
        if status.get("restartCount", 0) > 0
    ]
    assert not restarted, "\n".join(restarted)


def test_no_part_logged_a_missing_table():
    found = []
    for pod in kubectl_json("-n", NAMESPACE, "get", "pods")["items"]:
        name = pod["metadata"]["name"]
        for status in _statuses(pod):
            log = kubectl("-n", NAMESPACE, "logs", name, "-c", status["name"], check=False)
            found += [f"{name} {status['name']}: {line}" for line in log.splitlines() if MISSING_TABLE in line]
    assert not found, "\n".join(found)
