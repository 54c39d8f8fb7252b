"""The shared ingest vectors, run against the Python writer's validator (the Rust side runs the same file)."""
from __future__ import annotations

import calendar
import json
from pathlib import Path

import pytest

from visiontrack.errors import ApiError
from visiontrack.validation import Limits, validate_telemetry

VECTORS = json.loads((Path(__file__).parent / "ingest_vectors.json").read_text())
LIMITS = Limits(VECTORS["limits"]["max_body_bytes"], VECTORS["limits"]["max_readings"],
                VECTORS["limits"]["max_future_skew_seconds"], VECTORS["limits"]["retention_days"])
NOW_MS = calendar.timegm(__import__("time").strptime(VECTORS["now"], "%Y-%m-%dT%H:%M:%SZ")) * 1000


def _body(case: dict) -> bytes:
    text = (json.dumps(case["body"], separators=(",", ":"), ensure_ascii=False) if "body" in case
            else case["body_text"])
    return (text * case.get("body_repeat", 1)).encode("utf-8")


@pytest.mark.parametrize("case", VECTORS["cases"], ids=[c["name"] for c in VECTORS["cases"]])
def test_vector(case):
    expect = case["expect"]
    try:
        messages = validate_telemetry(case["content_type"], _body(case), NOW_MS, LIMITS)
    except ApiError as err:
        assert expect["status"] != 202, f"refused valid input: {err.code} {err.message} {err.details}"
        assert (err.status, err.code, err.message) == (expect["status"], expect["error"], expect["message"])
        assert err.details == expect.get("details", [])
        return
    assert expect["status"] == 202, f"accepted what should be {expect['status']} {expect.get('error')}"
    readings = [list(r) for m in messages for r in m.readings]
    assert len(readings) == expect["accepted"]
    assert readings == [[m, t, float(v)] for m, t, v in expect["readings"]]


def test_the_vectors_cover_the_contract():
    statuses = {c["expect"]["status"] for c in VECTORS["cases"]}
    assert statuses >= {202, 400, 413, 415} and len(VECTORS["cases"]) >= 50
