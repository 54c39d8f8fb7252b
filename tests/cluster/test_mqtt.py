"""MQTT on the cluster, as a device reaches it: through the release's MQTT Service, plain and over TLS (the
certificate from the Secret `make test-cluster` made for it), and through Traefik's mqtt entry point;
readings read back through the ingress; a bad token refused at CONNECT; a rotated token's live connection
closed within 5 s."""
from __future__ import annotations

import base64
import time
import uuid

import pytest
import requests

from tests.cluster.kube import (NAMESPACE, RELEASE, TRAEFIK_NAMESPACE, ServiceAddress, ingress_url, kubectl_json,
                                release_tokens)
from tests.integration.test_mqtt import V5, V311, Device

SERVICE = f"{RELEASE}-ingestor-mqtt"


@pytest.fixture(scope="module")
def api():
    admin, reader = release_tokens()
    return ingress_url(), admin, reader


def _ports() -> dict[str, int]:
    return {p["name"]: p["port"] for p in kubectl_json("-n", NAMESPACE, "get", "service", SERVICE)["spec"]["ports"]}


@pytest.fixture(scope="module")
def plain():
    address = ServiceAddress(NAMESPACE, SERVICE, _ports()["mqtt"])
    yield address
    address.close()


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    port = _ports().get("mqtts")
    if port is None:
        pytest.skip("the release serves no MQTT over TLS (ingestor.mqtt.tls.enabled)")
    deployment = kubectl_json("-n", NAMESPACE, "get", "deployment", f"{RELEASE}-ingestor")
    secret_name, = [v["secret"]["secretName"] for v in deployment["spec"]["template"]["spec"]["volumes"]
                    if "secret" in v]
    ca = tmp_path_factory.mktemp("mqtt-tls") / "tls.crt"
    ca.write_bytes(base64.b64decode(kubectl_json("-n", NAMESPACE, "get", "secret", secret_name)["data"]["tls.crt"]))
    address = ServiceAddress(NAMESPACE, SERVICE, port)
    yield address, ca
    address.close()


def _device(api) -> tuple[int, str]:
    url, admin, _ = api
    made = requests.post(f"{url}/api/devices/", json={"name": f"mqtt-{uuid.uuid4().hex[:8]}", "type": "sensor"},
                         headers={"Authorization": f"Bearer {admin}"}, timeout=10)
    assert made.status_code == 201, made.text
    return made.json()["id"], made.json()["token"]


def _connected(address, token: str, protocol, ca=None) -> Device:
    dev = Device(address.port, token, protocol, host=address.host)
    if ca is not None:
        dev.client.tls_set(ca_certs=str(ca))
        # The certificate names the Service's DNS name; the test reaches it by address (or a port-forward).
        dev.client.tls_insecure_set(True)
    return dev.connect()


def _read_back(api, device_id: int, metric: str, timeout: float = 60) -> float | None:
    url, _, reader = api
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        latest = requests.get(f"{url}/api/telemetry/latest", params={"device_id": device_id, "metric": metric},
                              headers={"Authorization": f"Bearer {reader}"}, timeout=10)
        if latest.status_code == 200 and metric in latest.json()["values"]:
            return latest.json()["values"][metric]["value"]
        time.sleep(0.5)
    return None


@pytest.mark.parametrize("protocol", [V311, V5], ids=["3.1.1", "5"])
def test_readings_published_to_the_service_are_stored_and_read_back(api, plain, protocol):
    device_id, token = _device(api)
    dev = _connected(plain, token, protocol)
    try:
        assert dev.ack(dev.publish({"mqtt_check": 21.5 + protocol})) == 0
    finally:
        dev.close()
    assert _read_back(api, device_id, "mqtt_check") == 21.5 + protocol


def test_readings_published_over_tls_are_stored_and_read_back(api, tls):
    address, ca = tls
    device_id, token = _device(api)
    dev = _connected(address, token, V5, ca)
    try:
        assert dev.ack(dev.publish({"mqtts_check": 7.25})) == 0
    finally:
        dev.close()
    assert _read_back(api, device_id, "mqtts_check") == 7.25


@pytest.fixture(scope="module")
def through_traefik():
    routes = kubectl_json("-n", NAMESPACE, "get", "ingressroutetcps.traefik.io")["items"]
    if not routes:
        pytest.skip("the release has no IngressRouteTCP (ingestor.mqtt.traefikRoute.enabled)")
    ports = {p["name"]: p["port"]
             for p in kubectl_json("-n", TRAEFIK_NAMESPACE, "get", "service", "traefik")["spec"]["ports"]}
    address = ServiceAddress(TRAEFIK_NAMESPACE, "traefik", ports["mqtt"])
    yield address
    address.close()


def test_readings_published_through_traefik_are_stored_and_read_back(api, through_traefik):
    device_id, token = _device(api)
    dev = _connected(through_traefik, token, V311)
    try:
        assert dev.ack(dev.publish({"mqtt_traefik_check": 3.5})) == 0
    finally:
        dev.close()
    assert _read_back(api, device_id, "mqtt_traefik_check") == 3.5


def test_a_bad_token_is_refused_at_connect(plain):
    dev = Device(plain.port, f"vtd_{uuid.uuid4().hex}", V5, host=plain.host).connect(expect_ok=False)
    dev.client.loop_stop()
    assert dev.connack == 0x87, f"CONNACK {dev.connack:#x}"  # not authorized: a token nobody has


def test_rotating_the_token_closes_the_live_connection_within_5_seconds(api, plain):
    url, admin, _ = api
    device_id, token = _device(api)
    dev = _connected(plain, token, V5)
    rotated = requests.post(f"{url}/api/devices/{device_id}/token", headers={"Authorization": f"Bearer {admin}"},
                            timeout=10)
    assert rotated.status_code == 200, rotated.text
    t0 = time.monotonic()
    closed = dev.disconnected.wait(10)
    dev.client.loop_stop()
    assert closed and time.monotonic() - t0 <= 5, f"closed={closed} after {time.monotonic() - t0:.1f} s"
    assert dev.disconnect_reason == 0x87
