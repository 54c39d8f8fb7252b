"""Telemetry from the query service's POST through the stream and real Celery processes into Postgres."""
from __future__ import annotations

import time

import pytest
import requests

from tests.conftest import poll
from tests.integration.api import ADMIN, READER, create_device


def _rows(db, device_id: int) -> list[tuple]:
    with db.cursor() as cur:
        cur.execute("SELECT metric, (extract(epoch FROM ts) * 1000)::bigint, value FROM telemetry "
                    "WHERE device_id = %s ORDER BY metric, ts", (device_id,))
        return cur.fetchall()


@pytest.fixture(scope="module")
def running_aggregator(base_env, run_dir):
    from tests.conftest import Aggregator

    agg = Aggregator(base_env, run_dir).start()
    yield agg
    agg.stop()


def test_posted_telemetry_comes_back_exactly(registry_url, query_url, running_aggregator):
    device = create_device(registry_url, "pipe")
    token = {"Authorization": f"Bearer {device['token']}"}
    now_ms = int(time.time() * 1000) // 1000 * 1000
    body = [{"ts": now_ms - 2000, "values": {"temperature": 21.5, "humidity": 40}},
            {"ts": now_ms - 1000, "values": {"temperature": 0.1 + 0.2, "door_open": True}}]
    resp = requests.post(f"{query_url}/api/telemetry/", json=body, headers=token)
    assert resp.status_code == 202, resp.text
    assert resp.json() == {"accepted": 4}

    def page():
        got = requests.get(f"{query_url}/api/telemetry/", params={"device_id": device["id"], "order": "asc"},
                           headers=READER).json()
        return got if len(got["items"]) == 4 else None

    got = poll(page, what="4 readings stored")
    assert got["next_cursor"] is None
    iso = lambda ms: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"  # noqa: E731
    # Ascending by (ts, metric): the sort key when only the device is pinned.
    assert got["items"] == [
        {"device_id": device["id"], "metric": "humidity", "ts": iso(now_ms - 2000), "value": 40.0},
        {"device_id": device["id"], "metric": "temperature", "ts": iso(now_ms - 2000), "value": 21.5},
        {"device_id": device["id"], "metric": "door_open", "ts": iso(now_ms - 1000), "value": 1.0},
        {"device_id": device["id"], "metric": "temperature", "ts": iso(now_ms - 1000), "value": 0.1 + 0.2},
    ]


def test_admin_posts_for_a_device_and_resending_stores_nothing_twice(registry_url, query_url, db,
                                                                        running_aggregator):
    device = create_device(registry_url, "pipe")
    now = int(time.time() * 1000)
    body = {"device_id": device["id"], "ts": now - 5000, "values": {"t": 1}}
    for _ in range(3):
        resp = requests.post(f"{query_url}/api/telemetry/", json=body, headers=ADMIN)
        assert resp.status_code == 202, resp.text
    poll(lambda: _rows(db, device["id"]), what="row stored")
    time.sleep(1.5)  # give the two resends their chance to (wrongly) double
    assert _rows(db, device["id"]) == [("t", now - 5000, 1.0)]


def test_bad_telemetry_is_refused_and_nothing_is_stored(registry_url, query_url, redis_client, db):
    device = create_device(registry_url, "pipe")
    token = {"Authorization": f"Bearer {device['token']}"}
    before = redis_client.xlen("vt:telemetry")
    cases = [
        (dict(json=[{"temperature": 1}, {"values": {"9bad": 1, "ok": "x"}}]), 400, "validation_error"),
        (dict(data="{", headers={"Content-Type": "application/json"}), 400, "malformed_json"),
        (dict(data="t=1", headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type"),
        (dict(data=b"[" + b"1," * 600_000 + b"1]", headers={"Content-Type": "application/json"}), 413,
         "payload_too_large"),
    ]
    for kwargs, status, code in cases:
        headers = {**token, **kwargs.pop("headers", {})}
        resp = requests.post(f"{query_url}/api/telemetry/", headers=headers, **kwargs)
        assert resp.status_code == status, resp.text
        assert resp.json()["error"] == code
    details = requests.post(f"{query_url}/api/telemetry/", headers=token,
                            json=[{"temperature": 1}, {"values": {"9bad": 1, "ok": "x"}}]).json()["details"]
    assert details == [
        {"index": 1, "field": "values.9bad",
         "message": "invalid metric name: must match ^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$"},
        {"index": 1, "field": "values.ok", "message": "must be a finite number or a boolean"},
    ]
    assert redis_client.xlen("vt:telemetry") == before
    assert _rows(db, device["id"]) == []


def test_device_auth_on_post(registry_url, query_url):
    device = create_device(registry_url, "pipe")
    other = create_device(registry_url, "pipe")
    body = {"values": {"t": 1}}
    assert requests.post(f"{query_url}/api/telemetry/", json=body).status_code == 401
    assert requests.post(f"{query_url}/api/telemetry/", json=body,
                         headers={"Authorization": "Bearer vtd_nope"}).status_code == 401
    assert requests.post(f"{query_url}/api/telemetry/", json=body, headers=READER).status_code == 403
    resp = requests.post(f"{query_url}/api/telemetry/", json={**body, "device_id": other["id"]},
                         headers={"Authorization": f"Bearer {device['token']}"})
    assert resp.status_code == 403
    resp = requests.post(f"{query_url}/api/telemetry/", json=body, headers=ADMIN)
    assert resp.status_code == 400 and resp.json()["details"][0]["field"] == "device_id"
    resp = requests.post(f"{query_url}/api/telemetry/", json={**body, "device_id": 987654321}, headers=ADMIN)
    assert resp.status_code == 404
    requests.patch(f"{registry_url}/api/devices/{device['id']}", json={"status": "disabled"}, headers=ADMIN)
    resp = requests.post(f"{query_url}/api/telemetry/", json=body,
                         headers={"Authorization": f"Bearer {device['token']}"})
    assert resp.status_code == 403 and resp.json()["error"] == "forbidden"
