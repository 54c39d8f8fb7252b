"""The chart's NetworkPolicies, enforced by the cluster, each shown both ways: what must talk, talks;
a connection nothing allows is dropped. Probe pods try TCP connections from chosen namespaces; the
parts' own egress is tried from inside a registry pod."""
from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.cluster.kube import KUBECTL, NAMESPACE, RELEASE, ensure_namespace, kubectl, service_host, start_probe

OUTSIDER_NAMESPACE = "vt-policy-outsider"
POSTGRES, REDIS = (service_host("postgres"), 5432), (service_host("redis"), 6379)
INGESTOR, REGISTRY, QUERY = (service_host("ingestor"), 80), (service_host("registry"), 80), (service_host("query"), 80)
WORKER_METRICS = (service_host("worker"), 9100)
EXPORTERS = [(service_host("postgres"), 9187), (service_host("redis"), 9121)]


def _connections(probe, targets) -> dict[tuple[str, int], bool]:
    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        return dict(zip(targets, pool.map(lambda t: probe.connects(*t), targets)))


@pytest.fixture(scope="module")
def probes():
    made, created = [], []

    def probe(namespace: str, **labels: str):
        if ensure_namespace(namespace):
            created.append(namespace)
        made.append(start_probe(namespace, labels))
        return made[-1]

    yield probe
    for pod in made:
        pod.delete()
    for namespace in created:
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_a_pod_of_another_namespace_reaches_nothing(probes):
    outsider = probes(OUTSIDER_NAMESPACE)
    result = _connections(outsider, [POSTGRES, REDIS, INGESTOR, REGISTRY, QUERY, WORKER_METRICS])
    assert not any(result.values()), f"connections a policy should drop: {[t for t, ok in result.items() if ok]}"


def test_the_ingress_controller_namespace_reaches_the_apis_and_not_the_databases(probes):
    controller = probes("traefik")
    result = _connections(controller, [INGESTOR, REGISTRY, QUERY, POSTGRES, REDIS])
    assert result == {INGESTOR: True, REGISTRY: True, QUERY: True, POSTGRES: False, REDIS: False}


def test_the_monitoring_namespace_reaches_the_metrics_ports_and_not_the_databases(probes):
    scraper = probes("monitoring")
    metrics = [INGESTOR, WORKER_METRICS, *EXPORTERS]
    result = _connections(scraper, metrics + [POSTGRES, REDIS])
    assert result == {**{t: True for t in metrics}, POSTGRES: False, REDIS: False}


def test_only_grafana_of_the_monitoring_namespace_reaches_postgres(probes):
    grafana = probes("monitoring", **{"app.kubernetes.io/name": "grafana"})
    assert _connections(grafana, [POSTGRES, REDIS]) == {POSTGRES: True, REDIS: False}


def test_in_the_release_namespace_only_labelled_api_clients_reach_the_apis(probes):
    client = probes(NAMESPACE, **{"app.kubernetes.io/instance": RELEASE, "visiontrack.io/api-client": "true"})
    stranger = probes(NAMESPACE)
    assert _connections(client, [REGISTRY, QUERY, POSTGRES]) == {REGISTRY: True, QUERY: True, POSTGRES: False}
    assert not any(_connections(stranger, [REGISTRY, QUERY, POSTGRES]).values())


def _registry_connects(host: str, port: int) -> bool:
    """Whether a registry pod (its image has Python, not curl) can open a TCP connection to host:port;
    a connect that times out is a policy's drop."""
    pod = kubectl("-n", NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/component=registry",
                  "-o", "jsonpath={.items[0].metadata.name}")
    code = ("import socket, sys\n"
            "try:\n    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()\n"
            "except TimeoutError:\n    sys.exit(3)\n")
    done = subprocess.run([KUBECTL, "-n", NAMESPACE, "exec", pod, "-c", "registry", "--", "python", "-c", code,
                           host, str(port)], capture_output=True, text=True, timeout=60)
    assert done.returncode in (0, 3), f"{host}:{port} from the registry: {done.stderr.strip()}"
    return done.returncode == 0


def test_a_part_reaches_its_databases_and_nothing_else():
    assert _registry_connects(*POSTGRES) and _registry_connects(*REDIS)
    assert not _registry_connects(*QUERY) and not _registry_connects(*INGESTOR)
