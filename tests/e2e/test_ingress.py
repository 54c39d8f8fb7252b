"""End to end over HTTP through nginx, routed like the Kubernetes Ingress, with real Celery processes."""
from __future__ import annotations

import time
import uuid

import pytest
import requests

from stack.nginx import Nginx
from stack.servers import free_port
from stack.services import INGESTOR_BINARY
from tests.conftest import ADMIN_TOKEN, READER_TOKEN, Aggregator, poll

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
READER = {"Authorization": f"Bearer {READER_TOKEN}"}


@pytest.fixture(scope="module")
def aggregator(base_env, run_dir):
    agg = Aggregator(base_env, run_dir).start()
    yield agg
    agg.stop()


def _register(ingress) -> dict:
    resp = requests.post(f"{ingress}/api/devices/", json={"name": f"e2e-{uuid.uuid4().hex[:10]}", "type": "e2e"},
                         headers=ADMIN)
    assert resp.status_code == 201, resp.text
    return resp.json()


def _read_all(ingress, device_id: int, expected: int) -> list[dict]:
    def fetch():
        items, cursor = [], None
        while True:
            params = {"device_id": device_id, "order": "asc", "limit": 2,
                      **({"cursor": cursor} if cursor else {})}
            page = requests.get(f"{ingress}/api/telemetry/", params=params, headers=READER).json()
            items += page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                return items if len(items) >= expected else None

    return poll(fetch, timeout=20, interval=0.2, what=f"{expected} readings through the ingress")


def test_register_post_and_read_back_exactly_through_the_ingress(ingress, aggregator):
    device = _register(ingress)
    token = {"Authorization": f"Bearer {device['token']}"}
    t = int(time.time() * 1000) - 60_000
    body = [{"ts": t, "values": {"temperature": 19.25}}, {"ts": t + 1, "values": {"temperature": -3.5e-7}},
            {"ts": t + 2, "values": {"temperature": 1e300}}]
    resp = requests.post(f"{ingress}/api/telemetry/", json=body, headers=token)
    assert resp.status_code == 202 and resp.json() == {"accepted": 3}
    items = _read_all(ingress, device["id"], 3)
    assert [(i["metric"], i["value"]) for i in items] == [("temperature", 19.25), ("temperature", -3.5e-7),
                                                         ("temperature", 1e300)]
    csv_resp = requests.get(f"{ingress}/api/telemetry/", params={"device_id": device["id"], "order": "asc"},
                            headers={**READER, "Accept": "text/csv"})
    assert csv_resp.headers["Content-Type"].startswith("text/csv")
    lines = csv_resp.text.strip().splitlines()
    assert lines[0] == "device_id,metric,ts,value" and lines[1].endswith(",19.25") and len(lines) == 4


def test_time_filters_and_descending_pages(ingress, aggregator):
    device = _register(ingress)
    t0 = (int(time.time() * 1000) - 600_000) // 1000 * 1000
    body = [{"ts": t0 + i * 1000, "values": {"a": i, "b": -i}} for i in range(10)]
    assert requests.post(f"{ingress}/api/telemetry/", json=body,
                         headers={"Authorization": f"Bearer {device['token']}"}).status_code == 202
    _read_all(ingress, device["id"], 20)
    page = requests.get(f"{ingress}/api/telemetry/", headers=READER,
                        params={"device_id": device["id"], "metric": "a", "from": t0 + 2000, "to": t0 + 5000}).json()
    assert [i["value"] for i in page["items"]] == [4.0, 3.0, 2.0]
    bad = requests.get(f"{ingress}/api/telemetry/", headers=READER, params={"from": "yesterday"})
    assert bad.status_code == 400 and bad.json()["details"][0]["field"] == "from"


def test_unknown_paths_answer_in_the_error_format(ingress):
    resp = requests.get(f"{ingress}/api/nothing-here")
    assert resp.status_code == 404
    assert resp.json() == {"error": "not_found", "message": "no such resource", "details": []}


def test_a_body_over_the_ingress_limit_is_refused_in_the_error_format(ingress):
    resp = requests.post(f"{ingress}/api/telemetry/", data=b"[" + b" " * (3 << 20) + b"]",
                         headers={**ADMIN, "Content-Type": "application/json"})
    assert resp.status_code == 413 and resp.json()["error"] == "payload_too_large"


def test_a_part_that_does_not_answer_gives_503_with_retry_after(run_dir):
    # An ingress of its own whose query upstream is a port nobody listens on.
    nginx = Nginx(free_port(), {"query": free_port()}, run_dir / "nginx-dead-upstream", run_dir / "logs")
    nginx.start()
    try:
        resp = requests.get(f"{nginx.url}/api/telemetry/latest?device_id=1", headers=READER)
    finally:
        nginx.stop()
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "5"
    assert resp.json()["error"] == "unavailable"


@pytest.mark.skipif(not INGESTOR_BINARY.exists(), reason="ingestor not built")
def test_devices_ingest_through_the_rust_ingestor(ingress, aggregator):
    device = _register(ingress)
    token = {"Authorization": f"Bearer {device['token']}"}
    t = int(time.time() * 1000) - 30_000
    shapes = [{"temperature": 20.5},
              {"ts": t, "values": {"humidity": 41, "door": True}},
              [{"ts": t + 1, "values": {"humidity": 42}}, {"ts": t + 2, "pressure": 1013.25}]]
    for body in shapes:
        resp = requests.post(f"{ingress}/api/ingest", json=body, headers=token)
        assert resp.status_code == 202, resp.text
    items = _read_all(ingress, device["id"], 5)
    assert sorted((i["metric"], i["value"]) for i in items) == [
        ("door", 1.0), ("humidity", 41.0), ("humidity", 42.0), ("pressure", 1013.25), ("temperature", 20.5)]


@pytest.mark.parametrize("path", ["/api/telemetry/", "/api/alerts/"])
def test_a_time_range_that_ends_before_it_starts_is_refused_naming_to(ingress, path):
    resp = requests.get(f"{ingress}{path}", headers=READER,
                        params={"from": "2026-11-27T03:00:00Z", "to": "2026-11-27T02:00:00Z"})
    assert resp.status_code == 400
    assert resp.json()["details"] == [{"field": "to", "message": "must be later than from"}]
    same = requests.get(f"{ingress}{path}", headers=READER,
                        params={"from": "2026-11-27T03:00:00Z", "to": "2026-11-27T03:00:00Z"})
    assert same.status_code == 400
