"""The chart's HTTPRoute instead of its Ingress, attached to the ingress controller's Gateway: the
release is upgraded to route through the Gateway API only, a device is registered, sends a reading
and reads it back, then the release goes back to its Ingress."""
from __future__ import annotations

import subprocess
import time
import uuid

import pytest
import requests

from tests.cluster.kube import HELM, NAMESPACE, RELEASE, TRAEFIK_NAMESPACE, ingress_url, kubectl, kubectl_json, \
    release_tokens

GATEWAY_CRD = "gateways.gateway.networking.k8s.io"


def _gateway() -> str | None:
    if not kubectl("get", "crd", GATEWAY_CRD, "--ignore-not-found", "-o", "name").strip():
        return None
    names = kubectl("-n", TRAEFIK_NAMESPACE, "get", "gateways", "-o", "jsonpath={.items[*].metadata.name}").split()
    return names[0] if names else None


def _upgrade(*settings: str) -> None:
    args = [HELM, "upgrade", RELEASE, "charts/visiontrack", "-n", NAMESPACE, "--reset-then-reuse-values", "--wait",
            "--timeout", "5m"]
    for setting in settings:
        args += ["--set", setting]
    subprocess.run(args, check=True, capture_output=True, timeout=400)


@pytest.fixture(scope="module")
def routed_by_gateway():
    gateway = _gateway()
    if gateway is None:
        pytest.skip("the cluster has no Gateway API or no Gateway in the ingress controller's namespace "
                    "(the local cluster's Traefik has both: k8s/local/traefik-values.yaml)")
    _upgrade("ingress.enabled=false", "httpRoute.enabled=true", f"httpRoute.parentRefs[0].name={gateway}",
             f"httpRoute.parentRefs[0].namespace={TRAEFIK_NAMESPACE}")
    yield gateway
    _upgrade("ingress.enabled=true", "httpRoute.enabled=false")


def _accepted(route: dict) -> bool:
    return any(c["type"] == "Accepted" and c["status"] == "True"
               for parent in route.get("status", {}).get("parents", []) for c in parent.get("conditions", []))


def test_the_route_is_accepted_and_the_api_answers_through_the_gateway(routed_by_gateway):
    assert kubectl("-n", NAMESPACE, "get", "ingresses", "-o", "name").strip() == ""
    route = kubectl_json("-n", NAMESPACE, "get", "httproute", RELEASE)
    assert _accepted(route), route.get("status")
    admin, reader = release_tokens()
    url = ingress_url()
    device = requests.post(f"{url}/api/devices/", json={"name": f"gw-{uuid.uuid4().hex[:8]}", "type": "gateway"},
                           headers={"Authorization": f"Bearer {admin}"}, timeout=10)
    assert device.status_code == 201, device.text
    sent = requests.post(f"{url}/api/ingest", json={"values": {"gateway_check": 42.5}},
                         headers={"Authorization": f"Bearer {device.json()['token']}"}, timeout=10)
    assert sent.status_code == 202, sent.text
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        latest = requests.get(f"{url}/api/telemetry/latest", params={"device_id": device.json()["id"]},
                              headers={"Authorization": f"Bearer {reader}"}, timeout=10)
        if latest.status_code == 200 and latest.json()["values"]:
            break
        time.sleep(0.5)
    assert latest.status_code == 200 and latest.json()["values"]["gateway_check"]["value"] == 42.5, latest.text
