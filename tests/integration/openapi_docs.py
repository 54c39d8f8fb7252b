"""The OpenAPI documents the services serve, and their schemas as JSON Schema validators (OpenAPI 3.1: JSON Schema
2020-12, with `$ref`s into the document's components)."""
from __future__ import annotations

import requests
from jsonschema import Draft202012Validator

DOCS = {"registry": "/api/devices/openapi.json", "query": "/api/telemetry/openapi.json"}
METHODS = ("get", "post", "put", "patch", "delete")


def fetch_docs(urls: dict[str, str]) -> dict[str, dict]:
    """Each service's served document, by service name."""
    out = {}
    for name, path in DOCS.items():
        resp = requests.get(f"{urls[name]}{path}")
        assert resp.status_code == 200, resp.text
        out[name] = resp.json()
    return out


def deref(doc: dict, node: dict) -> dict:
    """`node`, or what its `$ref` (followed as often as needed) points at."""
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        node = doc
        for part in ref[2:].split("/"):
            node = node[part]
    return node


def operations(doc: dict):
    """(path, method, operation) of every operation the document holds."""
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if method in METHODS:
                yield path, method, op


def problems(doc: dict, value, schema: dict) -> list[str]:
    """Where `value` breaks `schema` (a schema of `doc`): one line per error, none when it conforms."""
    validator = Draft202012Validator({"components": doc.get("components", {}), **schema})
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in validator.iter_errors(value)]


def conforms(doc: dict, value, schema: dict) -> bool:
    return not problems(doc, value, schema)


def response_schema(doc: dict, path: str, method: str, status: str, media: str = "application/json") -> dict:
    response = deref(doc, doc["paths"][path][method]["responses"][status])
    return response["content"][media]["schema"]
