"""After `helm uninstall --wait`: no pod, Service, workload or Job of the release is left; only the
databases' volume claims stay (by design: data outlives the release until the namespace goes)."""
from __future__ import annotations

import time

from tests.cluster.kube import NAMESPACE, kubectl


def _left() -> list[str]:
    left = kubectl("-n", NAMESPACE, "get", "pods,services,deployments,statefulsets,jobs,cronjobs,"
                   "horizontalpodautoscalers,networkpolicies,ingresses,configmaps,secrets",
                   "-o", "name", "--ignore-not-found").split()
    # Every namespace has the API server's root CA ConfigMap; it is not the release's.
    return [name for name in left if name != "configmap/kube-root-ca.crt"]


def test_uninstall_leaves_no_pods_services_or_workloads():
    # helm --wait waits for the objects it deleted; their pods go after them, each in its grace period.
    deadline = time.monotonic() + 120
    while _left() and time.monotonic() < deadline:
        time.sleep(1)
    assert _left() == []


def test_only_the_database_claims_stay():
    claims = kubectl("-n", NAMESPACE, "get", "persistentvolumeclaims", "-o", "name").split()
    assert [name for name in claims if "-postgres-" not in name and "-redis-" not in name] == []
