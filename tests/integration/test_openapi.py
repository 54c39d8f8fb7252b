"""The OpenAPI documents the services serve describe what they answer: every error in the one shape of API.md
("Errors"), the body of `POST /api/telemetry/`, and both media types of the raw list.

A client generated from the documents, or a schema-driven tester (schemathesis), reads them literally: an
error documented as flask-smorest's `{code, status, message, errors}` makes every real error a mismatch.
"""
from __future__ import annotations

import re

import pytest
import requests

from tests.integration.api import ADMIN, READER

DOCS = {"registry": "/api/devices/openapi.json", "query": "/api/telemetry/openapi.json"}
METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture(scope="module")
def docs(registry_url, query_url) -> dict:
    urls = {"registry": registry_url, "query": query_url}
    out = {}
    for name, path in DOCS.items():
        resp = requests.get(f"{urls[name]}{path}")
        assert resp.status_code == 200, resp.text
        out[name] = resp.json()
    return out


def _deref(doc: dict, node: dict) -> dict:
    """`node`, or what its `$ref` (followed as often as needed) points at."""
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        node = doc
        for part in ref[2:].split("/"):
            node = node[part]
    return node


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool}


def _conforms(doc: dict, value, schema: dict) -> bool:
    """`value` against the subset of OpenAPI 3.0 schemas the documents use (no jsonschema in the venv)."""
    schema = _deref(doc, schema)
    if value is None:
        return bool(schema.get("nullable")) or not schema
    for key, combine in (("oneOf", lambda hits: hits == 1), ("anyOf", lambda hits: hits >= 1)):
        if key in schema and not combine(sum(_conforms(doc, value, s) for s in schema[key])):
            return False
    kind = schema.get("type")
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            return False
    elif kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
    elif kind is not None and not isinstance(value, _TYPES[kind]):
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < schema.get("minimum", value) or value > schema.get("maximum", value):
            return False
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        return False
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            return False
        return all(_conforms(doc, item, schema.get("items", {})) for item in value)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        if len(value) < schema.get("minProperties", 0) or not set(schema.get("required", ())) <= set(value):
            return False
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                if not _conforms(doc, item, props[key]):
                    return False
            elif extra is False or (isinstance(extra, dict) and not _conforms(doc, item, extra)):
                return False
    return True


def _operations(doc: dict):
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if method in METHODS:
                yield path, method, op


# --- A: errors in the API's one shape -------------------------------------------------------------------------


@pytest.mark.parametrize("service", list(DOCS))
def test_every_error_response_is_documented_in_the_apis_error_shape(docs, service):
    doc = docs[service]
    seen = 0
    for path, method, op in _operations(doc):
        assert "default" in op["responses"], (path, method)
        for status, response in op["responses"].items():
            if status.startswith("2"):
                continue
            seen += 1
            response = _deref(doc, response)
            assert set(response["content"]) == {"application/json"}, (path, method, status)
            error = _deref(doc, response["content"]["application/json"]["schema"])
            assert set(error["properties"]) == {"error", "message", "details"}, (path, method, status)
            assert set(error["required"]) == {"error", "message", "details"}
            detail = _deref(doc, error["properties"]["details"]["items"])
            assert set(detail["properties"]) == {"index", "field", "message"}, (path, method, status)
    assert seen
    # flask-smorest's own error schema is nowhere
    for name, schema in doc["components"]["schemas"].items():
        assert not {"code", "status", "errors"} <= set(schema.get("properties", {})), name


def _error_schema(doc: dict, path: str, method: str) -> dict:
    return _deref(doc, doc["paths"][path][method]["responses"]["default"])["content"]["application/json"]["schema"]


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
        assert _conforms(doc, body, _error_schema(doc, path, method)), (path, method, body)
    assert any(d.get("index") is None and "index" in d for *_, r in answers for d in r.json()["details"])
    # and flask-smorest's shape does not
    assert not _conforms(registry, {"code": 400, "status": "Bad Request", "message": "x", "errors": {}},
                         _error_schema(registry, "/api/devices/", "post"))


# --- B: the body of POST /api/telemetry/ ------------------------------------------------------------------------


def test_the_seed_writer_documents_its_body_and_answer(docs):
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
        assert _conforms(doc, ok, schema), ok
    for bad in ({"values": {"t": "hot"}}, {"t": "1"}, {"device_id": 0, "t": 1}, {"device_id": 2**63, "t": 1},
                {"device_id": "7", "t": 1}, {"values": {"t": 1}, "extra": {}}, [], "t=1", [[{"t": 1}]]):
        assert not _conforms(doc, bad, schema), bad
    accepted = _deref(doc, op["responses"]["202"]["content"]["application/json"]["schema"])
    assert accepted["properties"]["accepted"]["type"] == "integer"


# --- C: the raw list's two media types --------------------------------------------------------------------------


def test_the_raw_list_documents_json_and_csv(docs):
    doc = docs["query"]
    ok = doc["paths"]["/api/telemetry/"]["get"]["responses"]["200"]
    assert set(ok["content"]) == {"application/json", "text/csv"}
    assert _deref(doc, ok["content"]["application/json"]["schema"])["properties"].keys() == {"items", "next_cursor"}
    assert ok["content"]["text/csv"]["schema"]["type"] == "string"
    assert _deref(doc, ok["headers"]["X-Next-Cursor"])["schema"]["type"] == "string"
    assert "400" in doc["paths"]["/api/telemetry/"]["get"]["responses"]


@pytest.mark.parametrize("service", list(DOCS))
def test_every_parameter_and_timestamp_has_a_type(docs, service):
    """A parameter without a type lets a client send anything: `from` and `to` were documented as `{}`."""
    doc = docs[service]
    untyped = [f"{method.upper()} {path} {param['name']}" for path, method, op in _operations(doc)
               for param in op.get("parameters", ()) if "type" not in _deref(doc, param).get("schema", {})]
    assert untyped == []
    for name, schema in doc["components"]["schemas"].items():
        for prop, sub in schema.get("properties", {}).items():
            assert sub != {}, f"{name}.{prop} has no type"


def test_times_in_arguments_document_the_shapes_they_take(docs):
    """`from=` (empty) is a 400; a document typing `from` as any string invites it."""
    times = [(path, _deref(doc, param)["schema"]) for doc in docs.values() for path, _, op in _operations(doc)
             for param in op.get("parameters", ()) if _deref(doc, param)["name"] in ("from", "to")]
    assert len(times) >= 6
    for path, schema in times:
        pattern = re.compile(schema["pattern"])
        assert all(pattern.search(t) for t in ("2026-11-27T03:00:00.123Z", "2026-11-27T04:00:00+01:00",
                                               "1795748400000")), path
        assert not any(pattern.search(t) for t in ("", "yesterday", "2026-11-27", "１２")), path
