"""The OpenAPI documents the services serve describe what they answer: every error in the one shape of docs/api.md
("Errors"), the body of `POST /api/telemetry/`, and both media types of the raw list.

A client generated from the documents, or a schema-driven tester (schemathesis), reads them literally: an
error documented as flask-smorest's `{code, status, message, errors}` makes every real error a mismatch, and a
body the server refuses must not be one the document calls valid (section D holds both to the same examples).
"""
from __future__ import annotations

import re
import uuid

import pytest
import requests

from tests.integration.api import ADMIN, READER, create_device, create_rule
from tests.integration.openapi_docs import DOCS, conforms, deref, fetch_docs, operations, problems


@pytest.fixture(scope="module")
def docs(registry_url, query_url) -> dict:
    return fetch_docs({"registry": registry_url, "query": query_url})


# --- A: errors in the API's one shape -------------------------------------------------------------------------


@pytest.mark.parametrize("service", list(DOCS))
def test_every_error_response_is_documented_in_the_apis_error_shape(docs, service):
    doc = docs[service]
    seen = 0
    for path, method, op in operations(doc):
        assert "default" in op["responses"], (path, method)
        for status, response in op["responses"].items():
            if status.startswith("2"):
                continue
            seen += 1
            response = deref(doc, response)
            assert set(response["content"]) == {"application/json"}, (path, method, status)
            error = deref(doc, response["content"]["application/json"]["schema"])
            assert set(error["properties"]) == {"error", "message", "details"}, (path, method, status)
            assert set(error["required"]) == {"error", "message", "details"}
            detail = deref(doc, error["properties"]["details"]["items"])
            assert set(detail["properties"]) == {"index", "field", "message"}, (path, method, status)
    assert seen
    # flask-smorest's own error schema is nowhere
    for name, schema in doc["components"]["schemas"].items():
        assert not {"code", "status", "errors"} <= set(schema.get("properties", {})), name


def _error_schema(doc: dict, path: str, method: str) -> dict:
    return deref(doc, doc["paths"][path][method]["responses"]["default"])["content"]["application/json"]["schema"]


def test_real_errors_match_the_documented_shape(docs, registry_url, query_url):
    registry, query = docs["registry"], docs["query"]
    json_ct = {**ADMIN, "Content-Type": "application/json"}
    answers = [
        (registry, "/api/devices/", "post", requests.post(f"{registry_url}/api/devices/", json={}, headers=ADMIN)),
        (registry, "/api/devices/", "post", requests.post(f"{registry_url}/api/devices/", json=[1], headers=ADMIN)),
        (registry, "/api/devices/", "post", requests.post(f"{registry_url}/api/devices/", data=b"{",
                                                          headers=json_ct)),
        (registry, "/api/devices/", "post", requests.post(f"{registry_url}/api/devices/", data=b"{}",
                                                          headers={**ADMIN, "Content-Type": "text/plain"})),
        (registry, "/api/devices/", "get", requests.get(f"{registry_url}/api/devices/")),
        (registry, "/api/devices/{device_id}", "get",
         requests.get(f"{registry_url}/api/devices/987654321", headers=READER)),
        (registry, "/api/alert-rules/", "post", requests.post(f"{registry_url}/api/alert-rules/",
                                                              json={"name": "x", "kind": "inactivity"}, headers=ADMIN)),
        (query, "/api/telemetry/", "get", requests.get(f"{query_url}/api/telemetry/", params={"limit": 0},
                                                       headers=READER)),
        (query, "/api/telemetry/", "post", requests.post(f"{query_url}/api/telemetry/", headers=READER,
                                                         json={"t": 1})),
        # details with "index", and with "index": null
        (query, "/api/telemetry/", "post", requests.post(f"{query_url}/api/telemetry/", headers=ADMIN,
                                                         json=[{"values": {"9bad": "x"}}])),
        (query, "/api/telemetry/", "post", requests.post(f"{query_url}/api/telemetry/", headers=ADMIN,
                                                         json=[{"device_id": 1, "t": 1}, {"device_id": 2, "t": 1}])),
        (query, "/api/alerts/", "get", requests.get(f"{query_url}/api/alerts/", params={"state": "x"},
                                                    headers=READER)),
    ]
    for doc, path, method, resp in answers:
        assert resp.status_code >= 400, resp.text
        body = resp.json()
        assert not problems(doc, body, _error_schema(doc, path, method)), (path, method, body)
    assert any(d.get("index") is None and "index" in d for *_, r in answers for d in r.json()["details"])
    # and flask-smorest's shape does not
    assert not conforms(registry, {"code": 400, "status": "Bad Request", "message": "x", "errors": {}},
                         _error_schema(registry, "/api/devices/", "post"))


# --- B: the body of POST /api/telemetry/ ------------------------------------------------------------------------


def test_the_telemetry_writer_documents_its_body_and_answer(docs):
    doc = docs["query"]
    op = doc["paths"]["/api/telemetry/"]["post"]
    body = op["requestBody"]
    assert body["required"] is True and set(body["content"]) == {"application/json"}
    schema = body["content"]["application/json"]["schema"]
    for ok in ({"device_id": 7, "values": {"temperature": 21.5, "door_open": True}},
               {"ts": "2026-11-27T03:00:00.123Z", "values": {"t": 1}},
               {"ts": 1795748400123, "temperature": 21.5, "on": False},
               {"temperature": 21},
               [{"device_id": 7, "values": {"t": 1}}, {"device_id": 7, "ts": 1795748400123, "t": 2}]):
        assert conforms(doc, ok, schema), ok
    for bad in ({"values": {"t": "hot"}}, {"t": "1"}, {"device_id": 0, "t": 1}, {"device_id": 2**63, "t": 1},
                {"device_id": "7", "t": 1}, {"values": {"t": 1}, "extra": {}}, [], "t=1", [[{"t": 1}]],
                {"9bad": 1}, {"values": {"t.": 1, "-t": 2}}, {"t": 1e301}, {"values": 5}, {"device_id": 7},
                {"ts": 1795748400123}, {"values": {}}, {"ts": "2026-13-01T00:00:00Z", "t": 1}, {"x" * 65: 1}):
        assert not conforms(doc, bad, schema), bad
    accepted = deref(doc, op["responses"]["202"]["content"]["application/json"]["schema"])
    assert accepted["properties"]["accepted"]["type"] == "integer"


# --- C: the raw list's two media types --------------------------------------------------------------------------


def test_the_raw_list_documents_json_and_csv(docs):
    doc = docs["query"]
    ok = doc["paths"]["/api/telemetry/"]["get"]["responses"]["200"]
    assert set(ok["content"]) == {"application/json", "text/csv"}
    assert deref(doc, ok["content"]["application/json"]["schema"])["properties"].keys() == {"items", "next_cursor"}
    assert ok["content"]["text/csv"]["schema"]["type"] == "string"
    assert deref(doc, ok["headers"]["X-Next-Cursor"])["schema"]["type"] == "string"
    assert "400" in doc["paths"]["/api/telemetry/"]["get"]["responses"]


@pytest.mark.parametrize("service", list(DOCS))
def test_every_parameter_and_timestamp_has_a_type(docs, service):
    """A parameter without a type lets a client send anything: `from` and `to` were documented as `{}`."""
    doc = docs[service]
    untyped = [f"{method.upper()} {path} {param['name']}" for path, method, op in operations(doc)
               for param in op.get("parameters", ()) if "type" not in deref(doc, param).get("schema", {})]
    assert untyped == []
    for name, schema in doc["components"]["schemas"].items():
        for prop, sub in schema.get("properties", {}).items():
            assert sub != {}, f"{name}.{prop} has no type"


def test_times_in_arguments_document_the_shapes_they_take(docs):
    """`from=` (empty) is a 400; a document typing `from` as any string invites it."""
    times = [(path, deref(doc, param)["schema"]) for doc in docs.values() for path, _, op in operations(doc)
             for param in op.get("parameters", ()) if deref(doc, param)["name"] in ("from", "to")]
    assert len(times) >= 6
    for path, schema in times:
        pattern = re.compile(schema["pattern"])
        assert all(pattern.search(t) for t in ("2026-11-27T03:00:00.123Z", "2026-11-27T04:00:00+01:00",
                                               "1795748400000")), path
        assert not any(pattern.search(t) for t in ("", "yesterday", "2026-11-27", "１２")), path


# --- D: the document and the server agree on what a request may hold ----------------------------------------------


def _body_schema(doc: dict, path: str, method: str) -> dict:
    return doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]


def _agree(doc: dict, path: str, method: str, bodies: list, send) -> None:
    """Each body is valid for the document exactly when the server takes it (a 2xx)."""
    schema = _body_schema(doc, path, method)
    disagree = []
    for body in bodies:
        resp = send(body)
        if conforms(doc, body, schema) != resp.ok:
            disagree.append(f"{body!r}: document {'takes' if conforms(doc, body, schema) else 'refuses'} it, "
                            f"server {resp.status_code} {resp.text[:200]}")
    assert not disagree, "\n".join(disagree)


def test_alert_rules_are_documented_as_one_schema_per_kind(docs, registry_url):
    doc = docs["registry"]
    create = deref(doc, _body_schema(doc, "/api/alert-rules/", "post"))
    assert create["discriminator"]["propertyName"] == "kind"
    assert set(create["discriminator"]["mapping"]) == {"threshold", "inactivity"}
    assert [deref(doc, s)["properties"]["kind"]["enum"] for s in create["oneOf"]] == [["threshold"], ["inactivity"]]
    answer = deref(doc, doc["paths"]["/api/alert-rules/{rule_id}"]["get"]["responses"]["200"])
    assert len(deref(doc, answer["content"]["application/json"]["schema"])["oneOf"]) == 2


def test_alert_rule_bodies_the_document_takes_are_those_the_server_takes(docs, registry_url):
    device = create_device(registry_url, "doc")
    # Disabled: no evaluator of another test fires them.
    threshold = {"name": "doc", "enabled": False, "metric": "t", "op": ">", "threshold": 30}
    inactivity = {"name": "doc", "enabled": False, "kind": "inactivity", "after_seconds": 60}
    bodies = [
        {**threshold}, {**threshold, "kind": "threshold", "for_seconds": 5}, {**inactivity},
        {**inactivity, "metric": "t", "for_seconds": 0}, {**threshold, "device_id": device["id"]},
        {**inactivity, "device_type": "pump"}, {**threshold, "device_id": None, "device_type": "pump"},
        {"name": "doc", "metric": "t", "op": ">"}, {**threshold, "after_seconds": 60}, {"name": "doc", "kind": "inactivity"},
        {**inactivity, "op": ">"}, {**inactivity, "threshold": 1}, {**inactivity, "for_seconds": 5},
        {**threshold, "device_id": device["id"], "device_type": "pump"}, {**threshold, "kind": "other"},
        {**threshold, "metric": "9t"}, {**threshold, "op": "=>"}, {**threshold, "extra": 1},
        *({**threshold, "webhook_url": url} for url in (
            "http://127.0.0.1:9/hook", "https://example.com/a?b=c#d", "HTTP://[::1]:8080/", "http://hooks.internal",
            "ftp://example.com/", "http://localhost:0/x", "http://localhost:65536/", "http://[:::1]/", "hooks",
            "http://exa mple.com/", "http://-x-.com/", "")),
        *({**threshold, "name": name} for name in ("", "x" * 128, "x" * 129, "nul\u0000here")),
    ]
    _agree(docs["registry"], "/api/alert-rules/", "post", bodies,
           lambda body: requests.post(f"{registry_url}/api/alert-rules/", json=body, headers=ADMIN))


def test_rule_changes_the_document_refuses_the_server_refuses(docs, registry_url):
    """A change is checked with the rule it makes, so only one way round: what the document refuses, the
    server refuses (what it takes, the server may refuse for the stored rule's sake)."""
    doc = docs["registry"]
    rule = create_rule(registry_url, kind="inactivity", after_seconds=60, enabled=False)
    schema = _body_schema(doc, "/api/alert-rules/{rule_id}", "patch")
    changes = [{"kind": "threshold", "op": None}, {"kind": "threshold", "after_seconds": 5},
               {"kind": "inactivity", "threshold": 1}, {"kind": "inactivity", "for_seconds": 3},
               {"kind": "inactivity", "after_seconds": None}, {"device_id": 1, "device_type": "x"},
               {"webhook_url": "ftp://x"}, {"name": ""}, {"for_seconds": -1}, {"severity": "loud"}]
    assert not any(conforms(doc, change, schema) for change in changes)
    for change in changes:
        resp = requests.patch(f"{registry_url}/api/alert-rules/{rule['id']}", json=change, headers=ADMIN)
        assert resp.status_code == 400, (change, resp.text)
    assert conforms(doc, {"kind": "threshold", "metric": "t", "op": ">", "threshold": 1, "after_seconds": None},
                    schema)


def test_device_bodies_the_document_takes_are_those_the_server_takes(docs, registry_url):
    def send(body):
        return requests.post(f"{registry_url}/api/devices/", json=body, headers=ADMIN)

    unique = lambda: f"doc-{uuid.uuid4().hex[:10]}"  # noqa: E731
    _agree(docs["registry"], "/api/devices/", "post", [
        {"name": unique()}, {"name": unique(), "type": None, "location": "hall", "metadata": {"a": [1, {"b": None}]}},
        {"name": unique(), "metadata": {"nul\u0000key": 1}}, {"name": unique(), "metadata": {"k": ["nul\u0000"]}},
        {"name": unique() + "\u0000"}, {"name": ""}, {"name": unique(), "type": "t" * 129}, {"name": unique(), "x": 1},
        {"name": unique(), "location": "l" * 256}, {"name": unique(), "location": "l" * 257},
    ], send)


def test_telemetry_bodies_the_document_takes_are_those_the_server_takes(docs, registry_url, query_url):
    device = create_device(registry_url, "doc")["id"]

    def send(body):
        return requests.post(f"{query_url}/api/telemetry/", json=body, headers=ADMIN)

    # Every body names the device (an admin token must) and no `ts` (its window moves with the clock).
    _agree(docs["query"], "/api/telemetry/", "post", [
        {"device_id": device, "t": 1}, {"device_id": device, "values": {"t": 1.5, "on": True, "a.b:c-d_e": -2}},
        [{"device_id": device, "t": 1}, {"device_id": device, "values": {"u": 2}}], {"device_id": device, "t": 1e300},
        {"device_id": device, "t": 1e301}, {"device_id": device, "t": "1"}, {"device_id": device, "9t": 1},
        {"device_id": device}, {"device_id": device, "values": {}}, {"device_id": device, "values": 1},
        {"device_id": device, "values": {"t": 1}, "u": 2}, [], {"device_id": device, "t" * 65: 1},
        {"device_id": device, "t" * 64: 1}, {"device_id": device, "t": None},
    ], send)
