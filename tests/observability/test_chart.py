"""The chart's monitoring objects: a ServiceMonitor per part (and per exporter) with the release label,
the PrometheusRule holding exactly the rules file, the dashboards and data sources for Grafana's sidecar,
and the exporter sidecars with pinned images, reachable only by Prometheus. (The CRD schema validation of
ServiceMonitors and PrometheusRules is in tests/chart/test_render.py.)"""
from __future__ import annotations

import json

import pytest

from tests.chart.helpers import CHART, RELEASE, NAMESPACE, by_kind, component, find, load_yaml_all, pod_spec, run

from .conftest import DASHBOARDS, RULES

pytestmark = pytest.mark.chart

FULL = "vt-visiontrack"
PARTS = {"ingestor": "http", "registry": "http", "query": "http", "worker": "metrics", "beat": "metrics"}


def test_every_part_and_exporter_should_have_a_service_monitor_with_the_release_label(render):
    objs = render("default")
    monitors = {component(m): m for m in by_kind(objs, "ServiceMonitor")}
    assert set(monitors) == set(PARTS) | {"redis", "postgres"}
    for comp, monitor in monitors.items():
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        endpoint, = monitor["spec"]["endpoints"]
        job = f"visiontrack-{comp}" + ("-exporter" if comp in ("redis", "postgres") else "")
        assert endpoint["relabelings"] == [{"action": "replace", "targetLabel": "job", "replacement": job}]
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        # the selector finds exactly the component's Service, which has the port the endpoint names
        services = [s for s in by_kind(objs, "Service")
                    if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
        assert len(services) == 1, comp
        assert endpoint["port"] in {p["name"] for p in services[0]["spec"]["ports"]}
        assert endpoint["port"] == PARTS.get(comp, "metrics")


def test_the_release_label_and_interval_should_follow_the_values(helm):
    text = run([helm, "template", RELEASE, str(CHART), "-n", NAMESPACE, "--api-versions", "monitoring.coreos.com/v1",
                "--set", "monitoring.release=prom", "--set", "monitoring.interval=15s",
                "--set", "query.metrics.serviceMonitor.enabled=false"]).stdout
    objs = load_yaml_all(text)
    monitors = by_kind(objs, "ServiceMonitor")
    assert "query" not in {component(m) for m in monitors}
    assert {m["metadata"]["labels"]["release"] for m in monitors + by_kind(objs, "PrometheusRule")} == {"prom"}
    assert {m["spec"]["endpoints"][0]["interval"] for m in monitors} == {"15s"}


def test_the_prometheus_rule_should_hold_exactly_the_rules_file(render):
    rule, = by_kind(render("default"), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"] == load_yaml_all(RULES.read_text())[0]


def test_the_runbook_links_should_follow_runbook_base_url(helm):
    text = run([helm, "template", RELEASE, str(CHART), "-n", NAMESPACE, "--api-versions", "monitoring.coreos.com/v1",
                "--set", "monitoring.runbookBaseUrl=https://git.example.com/vt/blob/main/docs/runbook.md"]).stdout
    rule, = by_kind(load_yaml_all(text), "PrometheusRule")
    urls = [r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert urls and all(u.startswith("https://git.example.com/vt/blob/main/docs/runbook.md#visiontrack") for u in urls)


def test_the_dashboards_should_be_config_maps_for_the_grafana_sidecar_holding_the_files(render):
    maps = [c for c in by_kind(render("default"), "ConfigMap") if c["metadata"]["labels"].get("grafana_dashboard") == "1"]
    files = {p.name: json.loads(p.read_text()) for p in DASHBOARDS.glob("*.json")}
    held = {k: json.loads(v) for c in maps for k, v in c["data"].items()}
    assert held == files  # byte for byte as JSON: Grafana's {{legend}} templates survived Helm
    assert any("{{" in t.get("legendFormat", "") for b in held.values() for p in b["panels"] for t in p.get("targets", []))


def test_the_postgres_data_source_should_reach_the_in_chart_database(render):
    secret = find(render("default"), "Secret", f"{FULL}-grafana-datasources")
    assert secret["metadata"]["labels"]["grafana_datasource"] == "1"
    config = load_yaml_all(secret["stringData"]["visiontrack-datasources.yaml"])[0]
    source, = config["datasources"]
    assert (source["uid"], source["type"]) == ("visiontrack-postgres", "grafana-postgresql-datasource")
    assert source["url"] == f"{FULL}-postgres.{NAMESPACE}.svc:5432"
    assert (source["user"], source["jsonData"]["database"]) == ("visiontrack", "visiontrack")
    board = json.loads((DASHBOARDS / "visiontrack-device-telemetry.json").read_text())
    assert {p["datasource"]["uid"] for p in board["panels"]} == {source["uid"]}


def test_an_external_database_should_be_the_data_source_and_have_no_sidecar(render):
    objs = render("external")
    source = load_yaml_all(find(objs, "Secret", f"{FULL}-grafana-datasources")["stringData"]
                           ["visiontrack-datasources.yaml"])[0]["datasources"][0]
    assert (source["url"], source["user"], source["jsonData"]["database"], source["jsonData"]["sslmode"]) == (
        "postgres.db.example.internal:5432", "visiontrack", "visiontrack", "require")
    assert source["secureJsonData"]["password"] == "example-password"
    assert not {component(m) for m in by_kind(objs, "ServiceMonitor")} & {"redis", "postgres"}


@pytest.mark.parametrize("db, port", [("redis", 9121), ("postgres", 9187)])
def test_the_exporters_should_be_pinned_sidecars_that_only_prometheus_reaches(render, db, port):
    objs = render("default")
    spec = pod_spec(find(objs, "StatefulSet", f"{FULL}-{db}"))
    exporter, = [c for c in spec["containers"] if c["name"] == f"{db}-exporter"]
    image = exporter["image"]
    assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image
    assert exporter["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    service = find(objs, "Service", f"{FULL}-{db}")
    assert {"name": "metrics", "port": port, "targetPort": "metrics", "protocol": "TCP"} in service["spec"]["ports"]
    policy = find(objs, "NetworkPolicy", f"{FULL}-{db}")
    metrics_rules = [r for r in policy["spec"]["ingress"] if {"port": "metrics", "protocol": "TCP"} in r["ports"]]
    assert len(metrics_rules) == 1
    assert metrics_rules[0]["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    secrets = {e["valueFrom"]["secretKeyRef"]["key"] for e in exporter["env"] if "valueFrom" in e}
    assert secrets == {"redis": {"REDIS_PASSWORD"}, "postgres": {"POSTGRES_PASSWORD"}}[db]


def test_monitoring_off_should_render_no_monitoring_objects_or_sidecars(render):
    objs = render("monitoring-off")
    assert not by_kind(objs, "ServiceMonitor") and not by_kind(objs, "PrometheusRule")
    assert not [c for c in by_kind(objs, "ConfigMap") if "grafana_dashboard" in c["metadata"]["labels"]]
    assert not [s for s in by_kind(objs, "Secret") if "grafana_datasource" in s["metadata"]["labels"]]
    for db in ("redis", "postgres"):
        assert [c["name"] for c in pod_spec(find(objs, "StatefulSet", f"{FULL}-{db}"))["containers"]] == [db]
