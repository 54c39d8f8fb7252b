"""The chart on engines scaled out (ci/scale-out-values.yaml): a Redis Cluster with Celery's broker on a plain
Redis, and Postgres with a hot standby the query service and Grafana read from (docs/scale-out.md)."""
from __future__ import annotations

import base64

from tests.chart.helpers import load_yaml_all

MODE = "scale-out"


def _env_names(render, component: str) -> set[str]:
    found = set()
    for obj in render(MODE):
        if obj["kind"] in ("Deployment", "StatefulSet") and obj["metadata"]["name"].endswith(f"-{component}"):
            for container in obj["spec"]["template"]["spec"]["containers"]:
                found |= {e["name"] for e in container.get("env", [])}
    assert found, f"no {component} workload rendered"
    return found


def _of_kind(render, kind: str) -> list[dict]:
    return [o for o in render(MODE) if o["kind"] == kind]


def test_the_broker_and_the_read_replica_reach_only_the_parts_that_use_them(render):
    for component in ("worker", "beat"):
        assert "VT_BROKER_URL" in _env_names(render, component)
    assert "VT_DATABASE_READ_URL" in _env_names(render, "query")
    for component in ("ingestor", "registry"):
        assert not {"VT_BROKER_URL", "VT_DATABASE_READ_URL"} & _env_names(render, component)
    assert "VT_BROKER_URL" not in _env_names(render, "query")


def test_the_secret_holds_both_urls_and_the_config_turns_cluster_mode_on(render):
    secret = next(o for o in _of_kind(render, "Secret") if "REDIS_URL" in o.get("data", {}))
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded["VT_BROKER_URL"].startswith("redis://") and "6380" in decoded["VT_BROKER_URL"]
    assert "pg-replicas" in decoded["VT_DATABASE_READ_URL"]
    config = next(o for o in _of_kind(render, "ConfigMap") if "VT_STREAM_SHARDS" in o.get("data", {}))
    assert config["data"]["VT_REDIS_CLUSTER"] == "true"


def test_grafana_reads_the_standby(render):
    datasources = next(o for o in _of_kind(render, "Secret") if "visiontrack-datasources.yaml" in
                       o.get("stringData", {}))
    postgres = load_yaml_all(datasources["stringData"]["visiontrack-datasources.yaml"])[0]["datasources"][0]
    assert postgres["url"] == "pg-replicas.db.example.internal:5432"


def test_only_the_worker_and_beat_may_reach_the_broker_port(render):
    def egress_ports(component: str) -> set[int]:
        policy = next(o for o in _of_kind(render, "NetworkPolicy") if o["metadata"]["name"].endswith(f"-{component}"))
        return {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}

    for component in ("worker", "beat"):
        assert {6379, 6380} <= egress_ports(component)
    for component in ("ingestor", "registry", "query"):
        assert 6380 not in egress_ports(component)
