"""The REST calls the integration tests make to the running services, each asserting its own success."""
from __future__ import annotations

import uuid

import requests

from tests.conftest import ADMIN_TOKEN, READER_TOKEN

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
READER = {"Authorization": f"Bearer {READER_TOKEN}"}


def create_device(registry_url, prefix: str = "dev", **fields) -> dict:
    resp = requests.post(f"{registry_url}/api/devices/", json={"name": f"{prefix}-{uuid.uuid4().hex[:10]}", **fields},
                         headers=ADMIN)
    assert resp.status_code == 201, resp.text
    return resp.json()


def create_rule(registry_url, **fields) -> dict:
    resp = requests.post(f"{registry_url}/api/alert-rules/", json={"name": f"rule-{uuid.uuid4().hex[:6]}", **fields},
                         headers=ADMIN)
    assert resp.status_code == 201, resp.text
    return resp.json()


def send_readings(query_url, device_id: int, *readings: tuple[int, float], metric: str = "temperature") -> None:
    """(ts_ms, value) readings of one metric, through the query service's POST /api/telemetry/."""
    body = [{"device_id": device_id, "ts": ts, "values": {metric: v}} for ts, v in readings]
    resp = requests.post(f"{query_url}/api/telemetry/", json=body, headers=ADMIN)
    assert resp.status_code == 202, resp.text


def list_alerts(query_url, **params) -> list[dict]:
    resp = requests.get(f"{query_url}/api/alerts/", params=params, headers=READER)
    assert resp.status_code == 200, resp.text
    return resp.json()["items"]
