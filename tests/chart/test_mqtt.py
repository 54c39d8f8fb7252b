"""MQTT in the chart: the ingestor's listener, its own Service (port mqtt, and mqtts with TLS), the
NetworkPolicy that lets devices in, TLS from a kubernetes.io/tls Secret mounted as a folder, and the
optional route through Traefik."""
from __future__ import annotations

import pytest

from .helpers import CHART, NAMESPACE, RELEASE, find, load_yaml_all, matches, run

FULL = f"{RELEASE}-visiontrack"
TLS = ["--set", "ingestor.mqtt.tls.enabled=true", "--set", "ingestor.mqtt.tls.secretName=mqtt-cert"]


def _render(helm: str, *args: str) -> list[dict]:
    text = run([helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args]).stdout
    return [o for o in load_yaml_all(text) if isinstance(o, dict)]


def _ingestor(objs: list[dict]) -> tuple[dict, dict]:
    deployment = find(objs, "Deployment", f"{FULL}-ingestor")
    return deployment, deployment["spec"]["template"]["spec"]["containers"][0]


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container["env"]}


def _ingress_ports(objs: list[dict]) -> list[str]:
    policy = find(objs, "NetworkPolicy", f"{FULL}-ingestor")
    return [p["port"] for rule in policy["spec"]["ingress"] for p in rule.get("ports", [])]


def test_mqtt_is_served_through_a_service_of_its_own_that_selects_the_ingestor_pods(helm):
    objs = _render(helm)
    deployment, container = _ingestor(objs)
    assert _env(container)["VT_MQTT_ADDR"] == "0.0.0.0:1883"
    assert {"name": "mqtt", "containerPort": 1883, "protocol": "TCP"} in container["ports"]
    service = find(objs, "Service", f"{FULL}-ingestor-mqtt")
    assert [p["name"] for p in service["spec"]["ports"]] == ["mqtt"]
    assert matches(service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert "mqtt" in _ingress_ports(objs)
    assert "VT_MQTT_TLS_ADDR" not in _env(container) and "volumes" not in deployment["spec"]["template"]["spec"]


def test_tls_adds_the_mqtts_port_everywhere_and_mounts_the_secret_as_a_folder(helm):
    objs = _render(helm, *TLS, "--set", "ingestor.mqtt.service.type=NodePort",
                   "--set", "ingestor.mqtt.tls.nodePort=30883")
    deployment, container = _ingestor(objs)
    env = _env(container)
    assert env["VT_MQTT_TLS_ADDR"] == "0.0.0.0:8883"
    mount, = container["volumeMounts"]
    assert mount["readOnly"] and "subPath" not in mount, "a subPath mount never sees a renewed certificate"
    assert env["VT_MQTT_TLS_CERT"] == f"{mount['mountPath']}/tls.crt"
    assert env["VT_MQTT_TLS_KEY"] == f"{mount['mountPath']}/tls.key"
    volume, = deployment["spec"]["template"]["spec"]["volumes"]
    assert volume == {"name": mount["name"], "secret": {"secretName": "mqtt-cert"}}
    assert {"name": "mqtts", "containerPort": 8883, "protocol": "TCP"} in container["ports"]
    service = find(objs, "Service", f"{FULL}-ingestor-mqtt")
    mqtts, = [p for p in service["spec"]["ports"] if p["name"] == "mqtts"]
    assert (mqtts["port"], mqtts["targetPort"], mqtts["nodePort"]) == (8883, "mqtts", 30883)
    assert {"mqtt", "mqtts"} <= set(_ingress_ports(objs))


def test_tls_without_a_secret_name_is_refused_naming_the_value(helm):
    out = run([helm, "template", RELEASE, str(CHART), "--set", "ingestor.mqtt.tls.enabled=true"], check=False)
    assert out.returncode != 0
    assert "secretName" in out.stderr, out.stderr


@pytest.mark.parametrize("args", [[], TLS], ids=["plain", "tls"])
def test_mqtt_off_leaves_no_port_service_or_tls(helm, args):
    objs = _render(helm, "--set", "ingestor.mqtt.enabled=false", *args)
    _, container = _ingestor(objs)
    assert not {"VT_MQTT_ADDR", "VT_MQTT_TLS_ADDR"} & set(_env(container))
    assert [p["name"] for p in container["ports"]] == ["http"]
    assert find(objs, "Service", f"{FULL}-ingestor-mqtt") is None
    assert "volumeMounts" not in container


def test_the_traefik_route_sends_its_entry_points_to_the_mqtt_service(helm):
    assert not [o for o in _render(helm) if o["kind"] == "IngressRouteTCP"], "off by default"
    objs = _render(helm, "--set", "ingestor.mqtt.traefikRoute.enabled=true",
                   "--set", "ingestor.mqtt.traefikRoute.entryPoints={mqtt,devices}")
    route = find(objs, "IngressRouteTCP", f"{FULL}-ingestor-mqtt")
    service = find(objs, "Service", f"{FULL}-ingestor-mqtt")
    assert route["spec"]["entryPoints"] == ["mqtt", "devices"]
    (rule,) = route["spec"]["routes"]
    assert rule["match"] == "HostSNI(`*`)"
    assert rule["services"] == [{"name": service["metadata"]["name"], "port": service["spec"]["ports"][0]["port"]}]


def test_no_traefik_route_without_mqtt(helm):
    objs = _render(helm, "--set", "ingestor.mqtt.enabled=false", "--set", "ingestor.mqtt.traefikRoute.enabled=true")
    assert not [o for o in objs if o["kind"] == "IngressRouteTCP"]
