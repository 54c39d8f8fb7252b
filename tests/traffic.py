"""Traffic that every panel and alert of the dashboards looks at, over HTTP only: devices registered, a
threshold rule that fires, readings through both writers (some resent: duplicates), rejections for several
reasons on both, reads through both APIs. Used by the local observability tests and by the cluster's
monitoring stage, each with its own URLs."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import requests

UNKNOWN_TOKEN = "vtd_unknown-token-000000000000000000000000000000"


@dataclass(frozen=True)
class Endpoints:
    """Where each API is reached (all three the same URL through an ingress)."""
    ingest: str  # a device write path: .../api/ingest (the ingestor) or .../api/telemetry/ (query)
    registry: str
    query: str
    admin_token: str


def post(url: str, body, token: str, content_type: str = "application/json") -> requests.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(url, data=data, headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
                         timeout=10)


def register(api: Endpoints, tag: str, count: int = 3) -> tuple[list[dict], dict]:
    """count devices and a rule that fires for the first one's temperature above 30."""
    admin = {"Authorization": f"Bearer {api.admin_token}"}
    devices = []
    for i in range(count):
        r = requests.post(f"{api.registry}/api/devices/", json={"name": f"{tag}-{i}", "type": "obs-thermo"},
                          headers=admin, timeout=10)
        assert r.status_code == 201, r.text
        devices.append(r.json())
    rule = requests.post(f"{api.registry}/api/alert-rules/", headers=admin, timeout=10, json={
        "name": f"{tag} hot", "metric": "temperature", "op": ">", "threshold": 30,
        "device_id": devices[0]["id"], "severity": "warning"})
    assert rule.status_code == 201, rule.text
    return devices, rule.json()


def send_round(api: Endpoints, devices: list[dict], now_ms: int, offset_ms: int) -> None:
    """Readings through both writers, rejections for several reasons on both, reads through both APIs; the
    last reading of every batch is the same each round, so every round after the first resends it."""
    resent = {"ts": now_ms - 60_000, "values": {"temperature": 35.5, "humidity": 40}}
    telemetry = f"{api.query}/api/telemetry/"
    for i, device in enumerate(devices):
        batch = [{"ts": now_ms - 120_000 + k * 1000 + offset_ms,
                  "values": {"temperature": 20 + k % 5 + i, "humidity": 40 + k % 3}} for k in range(50)] + [resent]
        # In requests of 5 readings: accepted requests outnumber the rejected ones below by far, as on a
        # healthy system (the rejections alert compares the two).
        for start in range(0, len(batch), 5):
            assert post(api.ingest, batch[start:start + 5], device["token"]).status_code == 202
        # POST /api/telemetry/, with the device's token and with an admin token naming the device
        assert post(telemetry, {"values": {"temperature": 21.0 + i}}, device["token"]).status_code == 202
        assert post(telemetry, {"device_id": device["id"], "values": {"humidity": 41}},
                    api.admin_token).status_code == 202
    for url in (api.ingest, telemetry):
        assert post(url, {"values": {"temperature": "hot"}}, devices[1]["token"]).status_code == 400
        assert post(url, b"{not json", devices[1]["token"]).status_code == 400
        assert post(url, {"temperature": 1}, UNKNOWN_TOKEN).status_code == 401
        assert post(url, "temperature=1", devices[1]["token"], "text/plain").status_code == 415
    admin = {"Authorization": f"Bearer {api.admin_token}"}
    for device in devices:
        assert requests.get(f"{api.query}/api/telemetry/latest", params={"device_id": device["id"]}, headers=admin,
                            timeout=10).status_code in (200, 404)
        assert requests.get(f"{api.registry}/api/devices/{device['id']}", headers=admin, timeout=10).status_code == 200
        assert requests.get(f"{api.query}/api/telemetry/aggregate", headers=admin, timeout=10, params={
            "device_id": device["id"], "metric": "temperature", "interval": "1m",
            "from": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))}).status_code == 200
