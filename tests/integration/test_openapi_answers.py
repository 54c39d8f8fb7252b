"""Every operation of both served OpenAPI documents, called successfully against the real services (with a real
aggregator, so that aggregates, latest values and alerts hold data): each success answer has a status, a media
type and a body its document gives for the operation, the body valid against that schema. An operation the
documents add fails the coverage check until it is called here too."""
from __future__ import annotations

import time
import uuid

import pytest
import requests

from tests.conftest import Aggregator, poll
from tests.integration.api import ADMIN, create_device, create_rule
from tests.integration.openapi_docs import deref, fetch_docs, operations, problems

CSV = {**ADMIN, "Accept": "text/csv"}


@pytest.fixture(scope="module")
def docs(registry_url, query_url) -> dict:
    return fetch_docs({"registry": registry_url, "query": query_url})


@pytest.fixture(scope="module")
def aggregator(base_env, run_dir):
    agg = Aggregator(base_env, run_dir, VT_ALERT_EVAL_SECONDS="0.5").start()
    yield agg
    agg.stop()


def _registry_calls(url: str) -> list[tuple[str, str, requests.Response]]:
    """(path, method, answer) of every registry operation, each a success."""
    first, second = create_device(url, "doc-a"), create_device(url, "doc-b", metadata={"site": {"floor": [1, 2]}})
    device = f"/api/devices/{first['id']}"
    calls = [
        ("/api/devices/", "post", requests.post(f"{url}/api/devices/", json={"name": f"doc-{uuid.uuid4().hex[:8]}",
                                                                             "type": "pump"}, headers=ADMIN)),
        ("/api/devices/", "get", requests.get(f"{url}/api/devices/", params={"limit": 1}, headers=ADMIN)),
        ("/api/devices/{device_id}", "get", requests.get(f"{url}{device}", headers=ADMIN)),
        ("/api/devices/{device_id}", "patch", requests.patch(f"{url}{device}", json={"location": "hall"},
                                                             headers=ADMIN)),
        ("/api/devices/{device_id}/token", "post", requests.post(f"{url}{device}/token", headers=ADMIN)),
        ("/api/devices/{device_id}/stats", "get", requests.get(f"{url}{device}/stats", headers=ADMIN)),
        ("/api/devices/{device_id}", "delete", requests.delete(f"{url}/api/devices/{second['id']}", headers=ADMIN)),
    ]
    rule = {"name": "doc", "kind": "inactivity", "after_seconds": 600, "device_id": first["id"], "enabled": False}
    create_rule(url, **rule)  # a second one, for a page to follow
    created = requests.post(f"{url}/api/alert-rules/", json=rule, headers=ADMIN)
    path = f"/api/alert-rules/{created.json()['id']}"
    return calls + [
        ("/api/alert-rules/", "post", created),
        ("/api/alert-rules/", "get", requests.get(f"{url}/api/alert-rules/", params={"limit": 1}, headers=ADMIN)),
        ("/api/alert-rules/{rule_id}", "get", requests.get(f"{url}{path}", headers=ADMIN)),
        ("/api/alert-rules/{rule_id}", "patch", requests.patch(f"{url}{path}", json={"severity": "critical"},
                                                               headers=ADMIN)),
        ("/api/alert-rules/{rule_id}", "delete", requests.delete(f"{url}{path}", headers=ADMIN)),
    ]


def _query_calls(registry_url: str, url: str) -> list[tuple[str, str, requests.Response]]:
    """(path, method, answer) of every query operation, each a success with data in it."""
    device = create_device(registry_url, "doc-q")["id"]
    rule = create_rule(registry_url, metric="heat", op=">", threshold=10, device_id=device)
    now = int(time.time() * 1000)
    body = [{"device_id": device, "ts": now - 2000, "values": {"heat": 20.5, "on": True}},
            {"device_id": device, "ts": now - 1000, "heat": 21}]
    sent = requests.post(f"{url}/api/telemetry/", json=body, headers=ADMIN)
    span = {"device_id": device, "from": now - 60_000, "to": now + 60_000}
    poll(lambda: requests.get(f"{url}/api/telemetry/latest", params={"device_id": device}, headers=ADMIN).json()
         ["values"], timeout=30, what="the readings stored")
    poll(lambda: requests.get(f"{url}/api/alerts/", params={"rule_id": rule["id"]}, headers=ADMIN).json()["items"],
         timeout=30, what="the alert raised")
    return [
        ("/api/telemetry/", "post", sent),
        ("/api/telemetry/", "get", requests.get(f"{url}/api/telemetry/", params={**span, "limit": 1}, headers=ADMIN)),
        ("/api/telemetry/", "get", requests.get(f"{url}/api/telemetry/", params={**span, "limit": 1}, headers=CSV)),
        ("/api/telemetry/aggregate", "get", requests.get(f"{url}/api/telemetry/aggregate", headers=ADMIN,
                                                         params={**span, "metric": "heat", "interval": "1m"})),
        ("/api/telemetry/latest", "get", requests.get(f"{url}/api/telemetry/latest", params={"device_id": device},
                                                      headers=ADMIN)),
        ("/api/alerts/", "get", requests.get(f"{url}/api/alerts/", params={"device_id": device}, headers=ADMIN)),
    ]


@pytest.fixture(scope="module")
def answers(registry_url, query_url, aggregator) -> dict[str, list]:
    return {"registry": _registry_calls(registry_url), "query": _query_calls(registry_url, query_url)}


def _check(doc: dict, path: str, method: str, resp: requests.Response) -> list[str]:
    """Why the answer is not one the document gives for the operation (nothing when it is)."""
    where = f"{method.upper()} {path} -> {resp.status_code}"
    documented = doc["paths"][path][method]["responses"]
    if not resp.ok or str(resp.status_code) not in documented:
        return [f"{where}: not a documented success ({sorted(documented)}): {resp.text[:300]}"]
    content = deref(doc, documented[str(resp.status_code)]).get("content")
    if content is None:
        return [] if not resp.content else [f"{where}: a body where the document gives none"]
    media = resp.headers.get("Content-Type", "").split(";")[0]
    if media not in content:
        return [f"{where}: {media}, where the document gives {sorted(content)}"]
    body = resp.json() if media == "application/json" else resp.text
    return [f"{where}: {p}" for p in problems(doc, body, content[media]["schema"])]


@pytest.mark.parametrize("service", ["registry", "query"])
def test_every_success_answer_is_valid_for_the_served_document(docs, answers, service):
    found = [p for path, method, resp in answers[service] for p in _check(docs[service], path, method, resp)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("service", ["registry", "query"])
def test_every_documented_operation_is_called(docs, answers, service):
    called = {(path, method) for path, method, _ in answers[service]}
    assert {(path, method) for path, method, _ in operations(docs[service])} == called


def test_the_answers_hold_data_and_pages_to_follow(answers):
    """Empty lists would validate anything: every list and page here has items, and a next cursor."""
    bodies = {(path, method): resp for path, method, resp in answers["registry"] + answers["query"]
              if resp.headers.get("Content-Type", "").startswith("application/json")}
    for path in ("/api/devices/", "/api/alert-rules/", "/api/telemetry/"):
        page = bodies[(path, "get")].json()
        assert page["items"] and page["next_cursor"], path
    assert bodies[("/api/alerts/", "get")].json()["items"]
    assert bodies[("/api/telemetry/aggregate", "get")].json()["items"]
    assert bodies[("/api/telemetry/latest", "get")].json()["values"]
