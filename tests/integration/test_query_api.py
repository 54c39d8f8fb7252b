"""The query service's HTTP promises (docs/api.md) that no other test holds it to: raw lists without a
device filter and their keyset pages (JSON and CSV), the alert state filter, the OpenAPI document, health,
backpressure on POST /api/telemetry/, the documented order of the ingest checks, and no 500 for bad input
(forged cursors, ids beyond a bigint, NUL characters).

Other tests share the session's Postgres and Redis: the data here belongs to fresh devices (or a fresh
metric), the raw rows sit a day ahead of now (where no writer puts any), and nothing assumes an empty table.
"""
from __future__ import annotations

import base64
import csv
import io
import json
import time
import uuid
from datetime import datetime, timezone

import pytest
import requests

from visiontrack.web.pagination import encode_cursor
from visiontrack.web.timefmt import to_micros

from tests.integration.api import ADMIN, READER, create_device, create_rule

DAY = 86_400_000


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


@pytest.fixture(scope="module")
def readings(db, registry_url):
    """36 raw rows a day ahead of now: 3 fresh devices x 2 fresh metrics x 6 times, ties on every time (so
    pages split inside a tie of ts, and of ts and device), plus rows of another metric on the same devices."""
    devices = sorted(create_device(registry_url, "qapi")["id"] for _ in range(3))
    tag = uuid.uuid4().hex[:8]
    metrics = [f"qa_{tag}_a", f"qa_{tag}_b"]
    other = f"qa_{tag}_other"
    base = (int(time.time() * 1000) + DAY) // 1000 * 1000
    times = [base + k * 1000 for k in range(6)]
    rows = [(d, m, t, float(i)) for i, (d, m, t) in enumerate((d, m, t) for t in times for d in devices
                                                               for m in metrics)]
    extra = [(d, other, t, -1.0) for d in devices for t in times[::2]]
    with db.cursor() as cur:
        cur.execute("SELECT vt_ensure_telemetry_partition(to_timestamp(%s)::date)", (base / 1000,))
        cur.executemany("INSERT INTO telemetry (device_id, metric, ts, value) "
                        "VALUES (%s, %s, to_timestamp(%s / 1000.0), %s)",
                        [(d, m, t, v) for d, m, t, v in rows + extra])
    yield {"devices": devices, "metrics": metrics, "rows": rows, "extra": extra}
    with db.cursor() as cur:
        cur.execute("DELETE FROM telemetry WHERE device_id = ANY(%s)", (devices,))


def _item(row) -> dict:
    device_id, metric, ts, value = row
    return {"device_id": device_id, "metric": metric, "ts": _iso(ts), "value": value}


def _get(query_url, path: str, **params) -> requests.Response:
    return requests.get(f"{query_url}{path}", params=params, headers=READER)


def _pages(query_url, stop=None, **params) -> tuple[list[dict], int]:
    """Every item of the raw list, following next_cursor; `stop(item)` ends the walk early."""
    items, cursor, pages = [], None, 0
    while True:
        resp = _get(query_url, "/api/telemetry/", **params, **({"cursor": cursor} if cursor else {}))
        assert resp.status_code == 200, resp.text
        page = resp.json()
        pages += 1
        items += page["items"]
        assert len(page["items"]) <= params.get("limit", 1000)
        cursor = page["next_cursor"]
        if not cursor or (stop and any(stop(i) for i in page["items"])):
            return items, pages


# --- raw list without a device filter ---------------------------------------------------------------------


def test_the_raw_list_without_a_filter_lists_every_reading_newest_first_across_pages(query_url, readings):
    oldest = min(t for _, _, t, _ in readings["rows"])
    # From the newest row of the table on (ours, a day ahead, unless another test stored later ones), until
    # the walk is past our oldest row; rows of others in between must keep the order too.
    items, pages = _pages(query_url, stop=lambda i: _ms(i["ts"]) < oldest, limit=5)
    keys = [(_ms(i["ts"]), i["device_id"], i["metric"]) for i in items]
    assert keys == sorted(keys, reverse=True) and len(set(keys)) == len(keys)  # newest first, no repeats
    mine = [i for i in items if i["device_id"] in readings["devices"] and _ms(i["ts"]) >= oldest]
    want = sorted(readings["rows"] + readings["extra"], key=lambda r: (r[2], r[0], r[1]), reverse=True)
    assert mine == [_item(r) for r in want]  # no gaps
    assert pages >= 8


def test_the_raw_list_by_metric_alone_pages_without_gaps_or_repeats(query_url, readings):
    metric = readings["metrics"][0]
    want = [r for r in readings["rows"] if r[1] == metric]
    for order, limit in (("desc", 4), ("asc", 5), ("desc", 1)):
        items, pages = _pages(query_url, metric=metric, order=order, limit=limit)
        ordered = sorted(want, key=lambda r: (r[2], r[0]), reverse=order == "desc")
        assert items == [_item(r) for r in ordered]
        assert pages == -(-len(want) // limit)


def test_csv_pages_follow_x_next_cursor(query_url, readings):
    metric = readings["metrics"][1]
    rows, cursor, pages = [], None, 0
    while True:
        resp = requests.get(f"{query_url}/api/telemetry/", headers={**READER, "Accept": "text/csv"},
                            params={"metric": metric, "limit": 5, **({"cursor": cursor} if cursor else {})})
        assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/csv")
        table = list(csv.reader(io.StringIO(resp.text)))
        assert table[0] == ["device_id", "metric", "ts", "value"]
        assert 1 <= len(table) - 1 <= 5
        rows += table[1:]
        pages += 1
        cursor = resp.headers.get("X-Next-Cursor")
        if not cursor:
            break
    want = sorted((r for r in readings["rows"] if r[1] == metric), key=lambda r: (r[2], r[0]), reverse=True)
    assert rows == [[str(d), m, _iso(t), repr(v)] for d, m, t, v in want]
    assert pages == -(-len(want) // 5)


# --- alerts --------------------------------------------------------------------------------------------------


def test_alerts_filter_by_state(db, registry_url, query_url):
    device = create_device(registry_url, "qapi")["id"]
    rule = create_rule(registry_url, metric=f"qa_{uuid.uuid4().hex[:8]}", op=">", threshold=1e300,
                       device_id=device, severity="info")["id"]
    now = int(time.time() * 1000)
    events = [("resolved", now - 50_000, now - 40_000), ("resolved", now - 30_000, now - 20_000),
              ("firing", now - 10_000, None)]
    ids = {}
    with db.cursor() as cur:
        for state, started, resolved in events:
            cur.execute("INSERT INTO alert_events (rule_id, device_id, state, value, started_at, resolved_at) "
                        "VALUES (%s, %s, %s, 2e300, to_timestamp(%s / 1000.0), to_timestamp(%s / 1000.0)) "
                        "RETURNING id", (rule, device, state, started, resolved))
            ids[started] = cur.fetchone()[0]
    firing = _get(query_url, "/api/alerts/", rule_id=rule, state="firing").json()["items"]
    assert [(a["id"], a["state"], a["resolved_at"]) for a in firing] == [(ids[now - 10_000], "firing", None)]
    resolved = _get(query_url, "/api/alerts/", device_id=device, state="resolved", limit=1)
    assert resolved.status_code == 200
    page = resolved.json()
    assert [(a["id"], a["state"]) for a in page["items"]] == [(ids[now - 30_000], "resolved")]
    rest = _get(query_url, "/api/alerts/", device_id=device, state="resolved", cursor=page["next_cursor"]).json()
    assert [(a["id"], a["resolved_at"]) for a in rest["items"]] == [(ids[now - 50_000], _iso(now - 40_000))]
    assert rest["next_cursor"] is None
    # The state alone, over every alert of the session: only that state, and ours among them.
    for state in ("firing", "resolved"):
        items = _get(query_url, "/api/alerts/", state=state, limit=1000).json()["items"]
        assert {a["state"] for a in items} == {state}
        assert {i for s, i in zip(events, ids.values()) if s[0] == state} <= {a["id"] for a in items}
    bad = _get(query_url, "/api/alerts/", state="open")
    assert bad.status_code == 400 and bad.json()["details"][0]["field"] == "state"


# --- the document and health ---------------------------------------------------------------------------------


def _refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_openapi_document_lists_the_query_paths(query_url):
    resp = requests.get(f"{query_url}/api/telemetry/openapi.json")
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("application/json")
    doc = resp.json()
    assert doc["openapi"].startswith("3.") and doc["info"]["title"] and doc["info"]["version"]
    assert {"/api/telemetry/", "/api/telemetry/aggregate", "/api/telemetry/latest", "/api/alerts/"} <= set(doc["paths"])
    assert set(doc["paths"]["/api/telemetry/"]) >= {"get", "post"}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if method in ("get", "post", "put", "patch", "delete"):
                assert op["responses"], (path, method)
                assert all(str(code).isdigit() or code == "default" for code in op["responses"])
    params = {p["name"]: p["schema"] for p in doc["paths"]["/api/telemetry/"]["get"]["parameters"]}
    assert {"device_id", "metric", "from", "to", "limit", "cursor", "order"} <= set(params)
    # The metric names every read takes are the contract's, in a pattern any client's regex engine reads
    # alike (no Python-only `\Z`).
    for path in ("/api/telemetry/", "/api/telemetry/aggregate", "/api/telemetry/latest"):
        metric = next(p for p in doc["paths"][path]["get"]["parameters"] if p["name"] == "metric")
        assert metric["schema"]["pattern"] == "^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$", path
    # Every reference resolves inside the document.
    for ref in _refs(doc):
        assert ref.startswith("#/"), ref
        node = doc
        for part in ref[2:].split("/"):
            node = node[part]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_health_and_readiness_need_no_token(query_url):
    health = requests.get(f"{query_url}/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = requests.get(f"{query_url}/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


# --- POST /api/telemetry/ -------------------------------------------------------------------------------------


@pytest.fixture
def low_water_query(base_env, run_dir, redis_client):
    """A query service of its own whose stream (a key of its own) has a high-water mark of 1 entry."""
    from tests.conftest import _web

    key = f"vt:test-high-water:{uuid.uuid4().hex[:8]}"
    proc, url = _web("query", base_env, run_dir, VT_STREAM_KEY=key, VT_STREAM_HIGH_WATER="1",
                     VT_BACKLOG_CHECK_MS="1", VT_RETRY_AFTER_SECONDS="7", VT_HTTP_WORKERS="1")
    yield url, key
    proc.stop()
    redis_client.delete(key)


def test_post_answers_503_with_retry_after_over_the_high_water_mark(registry_url, low_water_query, redis_client):
    url, key = low_water_query
    device = create_device(registry_url, "qapi")["id"]
    body = {"device_id": device, "values": {"t": 1}}
    for backlog in (0, 1):  # at or under the mark: written
        time.sleep(0.01)  # past the backlog's sampling interval (1 ms)
        assert redis_client.xlen(key) == backlog
        resp = requests.post(f"{url}/api/telemetry/", json=body, headers=ADMIN)
        assert resp.status_code == 202, resp.text
    assert redis_client.xlen(key) == 2
    time.sleep(0.01)
    resp = requests.post(f"{url}/api/telemetry/", json=body, headers=ADMIN)
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "7"
    assert resp.json()["error"] == "unavailable"
    assert redis_client.xlen(key) == 2  # nothing written


def test_over_the_mark_a_device_gets_503_before_its_body_is_read(registry_url, low_water_query, redis_client):
    """As at /api/ingest: a device token names the shard, so an overloaded one refuses before any parsing."""
    url, key = low_water_query
    device = create_device(registry_url, "qapi")
    token = {"Authorization": f"Bearer {device['token']}"}
    for _ in range(2):  # up to the mark
        time.sleep(0.01)
        assert requests.post(f"{url}/api/telemetry/", json={"t": 1}, headers=token).status_code == 202
    time.sleep(0.01)
    resp = requests.post(f"{url}/api/telemetry/", data=b"{not json", headers={**token, "Content-Type": "application/json"})
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "7"
    assert redis_client.xlen(key) == 2


def test_post_checks_the_media_type_before_the_size(registry_url, query_url, redis_client):
    """docs/contracts.md section 3: 415 comes before 413, whatever Content-Length declares."""
    device = create_device(registry_url, "qapi")
    token = {"Authorization": f"Bearer {device['token']}"}
    before = redis_client.xlen("vt:telemetry")
    big = b"t=1&" * 300_000  # 1.2 MB, over the 1 MiB limit
    resp = requests.post(f"{query_url}/api/telemetry/", data=big, headers={**token, "Content-Type": "text/plain"})
    assert resp.status_code == 415 and resp.json()["error"] == "unsupported_media_type"
    resp = requests.post(f"{query_url}/api/telemetry/", data=big, headers=token)  # no Content-Type at all
    assert resp.status_code == 415
    resp = requests.post(f"{query_url}/api/telemetry/", data=b"[" + b"1," * 600_000 + b"1]",
                         headers={**token, "Content-Type": "application/json"})
    assert resp.status_code == 413 and resp.json()["message"] == "body exceeds 1048576 bytes"
    assert redis_client.xlen("vt:telemetry") == before


@pytest.mark.parametrize("device_id", [2**63, 2**64, 10**30])
def test_an_admin_device_id_beyond_a_bigint_is_a_400_naming_it(query_url, redis_client, device_id):
    """As the id converters and the query arguments do (fields.ID_RANGE): no such id can exist, so the request is
    malformed, not about a missing device (it was a 404)."""
    before = redis_client.xlen("vt:telemetry")
    resp = requests.post(f"{query_url}/api/telemetry/", json=[{"device_id": device_id, "values": {"t": 1}}],
                         headers=ADMIN)
    assert resp.status_code == 400 and resp.json()["error"] == "validation_error", resp.text
    assert [(d["index"], d["field"]) for d in resp.json()["details"]] == [(0, "device_id")]
    # the largest bigint is an id like any other: simply no such device
    resp = requests.post(f"{query_url}/api/telemetry/", json={"device_id": 2**63 - 1, "values": {"t": 1}},
                         headers=ADMIN)
    assert resp.status_code == 404 and resp.json()["error"] == "not_found", resp.text
    assert redis_client.xlen("vt:telemetry") == before


# --- no 500 for bad input ---------------------------------------------------------------------------------------


def _field(resp: requests.Response) -> list:
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"] == "validation_error"
    return [d["field"] for d in resp.json()["details"]]


HUGE_ID = "99999999999999999999"
PATHS = {"/api/telemetry/latest": {}, "/api/telemetry/aggregate": {"metric": "t", "interval": "1h"},
         "/api/telemetry/": {}, "/api/alerts/": {}}


@pytest.mark.parametrize("path", list(PATHS))
def test_an_id_beyond_a_bigint_is_a_400_naming_device_id(query_url, path):
    assert _field(_get(query_url, path, device_id=HUGE_ID, **PATHS[path])) == ["device_id"]


@pytest.mark.parametrize("path", list(PATHS))
def test_a_nul_in_the_metric_is_a_400_naming_metric(query_url, path):
    assert _field(_get(query_url, path, **{**PATHS[path], "device_id": 1, "metric": "a\x00b"})) == ["metric"]


# int() and str.isdigit() take other scripts' digits ("\uff11\uff12" is 12 to them) and underscores ("1_0"): an
# integer argument is ASCII digits, with an optional leading '-', and nothing else.
NOT_ASCII_INTEGERS = ["\uff11\uff12", "\u0663", "1_0", "+5", " 5"]


@pytest.mark.parametrize("value", NOT_ASCII_INTEGERS)
@pytest.mark.parametrize("path,name", [("/api/telemetry/", "device_id"), ("/api/telemetry/", "limit"),
                                       ("/api/alerts/", "device_id"), ("/api/alerts/", "rule_id"),
                                       ("/api/alerts/", "limit"), ("/api/telemetry/latest", "device_id"),
                                       ("/api/telemetry/aggregate", "device_id")])
def test_integer_arguments_are_ascii_digits(query_url, path, name, value):
    assert _field(_get(query_url, path, **PATHS[path], **{name: value})) == [name]


def _digits(text: str, zero: int) -> str:
    """`text` with its ASCII digits written in another script's digits, from `zero` on."""
    return "".join(chr(zero + int(c)) if c.isdigit() else c for c in text)


@pytest.mark.parametrize("script", ["fullwidth", "arabic-indic", "underscores"])
@pytest.mark.parametrize("path", ["/api/telemetry/", "/api/telemetry/aggregate", "/api/alerts/"])
def test_epoch_milliseconds_are_ascii_digits(query_url, path, script):
    hour_ago = str(int(time.time() * 1000) - 3_600_000)
    value = {"fullwidth": _digits(hour_ago, 0xFF10), "arabic-indic": _digits(hour_ago, 0x0660),
             "underscores": f"{hour_ago[:4]}_{hour_ago[4:]}"}[script]
    params = {**PATHS[path], "device_id": 1, "metric": "t"} if path != "/api/alerts/" else {}
    assert _field(_get(query_url, path, **params, **{"from": value})) == ["from"]
    resp = _get(query_url, path, **params, **{"from": hour_ago})
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("metric", ["9bad", "temp\n", "tempé", "a b", "x" * 65])
def test_the_raw_list_takes_only_metric_names(query_url, metric):
    assert _field(_get(query_url, "/api/telemetry/", metric=metric)) == ["metric"]


# The first and last instants a datetime holds, in epoch microseconds (what a raw cursor's ts is).
MICROS_MIN, MICROS_MAX = (to_micros(d.replace(tzinfo=timezone.utc)) for d in (datetime.min, datetime.max))


def _raw_cursor(*key) -> str:
    return encode_cursor(list(key))


FORGED = {
    # (ts, device_id, metric) with no filter
    "ts past a datetime": ({}, _raw_cursor(MICROS_MAX + 1, 1, "t")),
    "huge ts": ({}, _raw_cursor(10**30, 1, "t")),
    "ts before year 1": ({}, _raw_cursor(MICROS_MIN - 1, 1, "t")),
    "device past a bigint": ({}, _raw_cursor(0, 2**63, "t")),
    "NUL in the metric": ({}, _raw_cursor(0, 1, "a\x00b")),
    "lone surrogate in the metric": ({}, _raw_cursor(0, 1, "\ud800")),
    "float ts": ({}, _raw_cursor(1.5, 1, "t")),
    "bool device": ({}, _raw_cursor(0, True, "t")),
    "deep nesting": ({}, base64.urlsafe_b64encode(b"[" * 1100 + b"]" * 1100).decode()),
    # (ts) with device and metric, (ts, device_id) with the metric alone
    "huge ts, one series": ({"device_id": 1, "metric": "t"}, _raw_cursor(2**62)),
    "huge ts, one metric": ({"metric": "t"}, _raw_cursor(-(2**62), 1)),
}


@pytest.mark.parametrize("name", list(FORGED))
def test_a_forged_raw_cursor_is_a_400_naming_cursor(query_url, name):
    params, cursor = FORGED[name]
    assert _field(_get(query_url, "/api/telemetry/", cursor=cursor, **params)) == ["cursor"]


@pytest.mark.parametrize("key", [[2**63], [-(2**63) - 1], [10**40], ["1"]])
def test_a_forged_alert_cursor_is_a_400_naming_cursor(query_url, key):
    assert _field(_get(query_url, "/api/alerts/", cursor=encode_cursor(key))) == ["cursor"]


def test_cursors_at_the_ends_of_the_range_are_taken(query_url):
    """The bounds are those of the values a cursor can hold, not tighter: the first and last instants a
    datetime holds are still cursors (nothing comes after the last, descending, or before the first)."""
    for order, ts in (("desc", MICROS_MIN), ("asc", MICROS_MAX)):
        for params, key in (({}, [ts, 1, "t"]), ({"metric": "t"}, [ts, 1]), ({"device_id": 1, "metric": "t"}, [ts])):
            resp = _get(query_url, "/api/telemetry/", order=order, cursor=encode_cursor(key), **params)
            assert resp.status_code == 200, (order, params, resp.text)
            assert resp.json() == {"items": [], "next_cursor": None}
    resp = _get(query_url, "/api/alerts/", cursor=encode_cursor([-(2**63)]))
    assert resp.status_code == 200 and resp.json()["items"] == []


def test_a_returned_cursor_holds_the_last_rows_key(readings, query_url):
    """A cursor the API returned is a base64 JSON list, and decodes back to the key it names."""
    page = _get(query_url, "/api/telemetry/", metric=readings["metrics"][0], limit=1).json()
    raw = page["next_cursor"]
    key = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    first = page["items"][0]
    assert key == [_ms(first["ts"]) * 1000, first["device_id"]]



@pytest.mark.parametrize("tz", ["UTC", "Pacific/Kiritimati", "Etc/GMT-14", "America/Adak"])
def test_an_aggregate_at_the_end_of_time_is_a_400_naming_to(query_url, tz):
    """Local times past 9999 are no datetime: an aggregate ending after 9999-12-30 in a zone east of UTC was a
    500. Up to that day every zone answers."""
    args = {"device_id": 1, "metric": "t", "interval": "1h", "tz": tz}
    assert _field(_get(query_url, "/api/telemetry/aggregate", **args, **{"from": "9999-12-30T00:00:00Z",
                                                                          "to": "9999-12-31T23:59:59Z"})) == ["to"]
    resp = _get(query_url, "/api/telemetry/aggregate", **args, **{"from": "9999-12-29T00:00:00Z",
                                                                   "to": "9999-12-30T00:00:00Z"})
    assert resp.status_code == 200 and resp.json()["items"] == []


def test_the_latest_to_is_stated_to_the_instant(query_url):
    """The message names the exact last instant taken: a millisecond after it is refused, though it is still on
    9999-12-30 (the message once said "9999-12-30 or earlier")."""
    args = {"device_id": 1, "metric": "t", "interval": "1h", "from": "9999-12-29T00:00:00Z"}
    resp = _get(query_url, "/api/telemetry/aggregate", **args, to="9999-12-30T00:00:00.001Z")
    assert _field(resp) == ["to"]
    assert resp.json()["details"][0]["message"] == "must be 9999-12-30T00:00:00Z or earlier"
    assert _get(query_url, "/api/telemetry/aggregate", **args, to="9999-12-30T00:00:00Z").status_code == 200
