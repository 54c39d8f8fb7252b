"""The registry's input edges over real HTTP: JSON bodies must be labelled JSON (415 otherwise), and input that
once answered 500 (ids beyond a bigint, NUL characters, lone surrogates) is refused, naming the field, with
nothing stored."""
from __future__ import annotations

import json
import uuid

import pytest
import requests

from tests.integration.api import ADMIN, READER, create_device, create_rule

RULE = {"metric": "temperature", "op": ">", "threshold": 30}
BIGINT_MAX = 2**63 - 1


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _device_row(db, device_id: int):
    with db.cursor() as cur:
        cur.execute("SELECT name, type, location, metadata, status, updated_at FROM devices WHERE id = %s",
                    (device_id,))
        return cur.fetchone()


def _rule_row(db, rule_id: int):
    with db.cursor() as cur:
        cur.execute("SELECT name, metric, op, threshold, device_id, enabled, updated_at, deleted_at "
                    "FROM alert_rules WHERE id = %s", (rule_id,))
        return cur.fetchone()


def _stored(db, table: str, name: str) -> bool:
    with db.cursor() as cur:
        cur.execute(f"SELECT 1 FROM {table} WHERE name = %s", (name,))
        return cur.fetchone() is not None


def _count(db, table: str) -> int:
    with db.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        return cur.fetchone()[0]


def _fields(resp) -> list:
    return [d["field"] for d in resp.json()["details"]]


# --- JSON bodies: labelled application/json, or 415 -------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", None, "application/x-www-form-urlencoded"])
def test_a_body_not_labelled_json_is_refused_and_changes_nothing(registry_url, db, content_type):
    device = create_device(registry_url)
    rule = create_rule(registry_url, **RULE)
    device_before, rule_before = _device_row(db, device["id"]), _rule_row(db, rule["id"])
    new_device, new_rule = _name("unlabelled"), _name("unlabelled-rule")
    calls = [
        ("POST", "/api/devices/", {"name": new_device}),
        ("PATCH", f"/api/devices/{device['id']}", {"name": new_device, "status": "disabled", "location": "x"}),
        ("POST", "/api/alert-rules/", {"name": new_rule, **RULE}),
        ("PATCH", f"/api/alert-rules/{rule['id']}", {"name": new_rule, "threshold": 99, "enabled": False}),
    ]
    headers = {**ADMIN, **({"Content-Type": content_type} if content_type else {})}
    for method, path, body in calls:
        # bytes as data: requests adds no Content-Type of its own
        resp = requests.request(method, f"{registry_url}{path}", data=json.dumps(body).encode(), headers=headers)
        assert resp.status_code == 415, (method, path, resp.status_code, resp.text)
        assert resp.json()["error"] == "unsupported_media_type", resp.text
        assert resp.json()["details"] == []
    assert _device_row(db, device["id"]) == device_before
    assert _rule_row(db, rule["id"]) == rule_before
    assert not _stored(db, "devices", new_device) and not _stored(db, "alert_rules", new_rule)


def test_a_patch_without_a_body_is_refused_and_changes_nothing(registry_url, db):
    device = create_device(registry_url)
    rule = create_rule(registry_url, **RULE)
    device_before, rule_before = _device_row(db, device["id"]), _rule_row(db, rule["id"])
    for path in (f"/api/devices/{device['id']}", f"/api/alert-rules/{rule['id']}"):
        resp = requests.patch(f"{registry_url}{path}", headers=ADMIN)
        assert resp.status_code == 415 and resp.json()["error"] == "unsupported_media_type", resp.text
        # labelled JSON but empty: not JSON either
        resp = requests.patch(f"{registry_url}{path}", headers={**ADMIN, "Content-Type": "application/json"})
        assert resp.status_code == 400 and resp.json()["error"] == "malformed_json", resp.text
    resp = requests.post(f"{registry_url}/api/devices/", headers=ADMIN)
    assert resp.status_code == 415 and resp.json()["error"] == "unsupported_media_type", resp.text
    assert _device_row(db, device["id"]) == device_before
    assert _rule_row(db, rule["id"]) == rule_before


def test_json_with_a_charset_parameter_is_json(registry_url):
    headers = {**ADMIN, "Content-Type": "application/json; charset=utf-8"}
    resp = requests.post(f"{registry_url}/api/devices/", data=json.dumps({"name": _name("charset")}).encode(),
                         headers=headers)
    assert resp.status_code == 201, resp.text
    resp = requests.patch(f"{registry_url}/api/devices/{resp.json()['id']}", data=b'{"location": "here"}',
                          headers=headers)
    assert resp.status_code == 200 and resp.json()["location"] == "here", resp.text


def test_endpoints_without_a_body_need_no_content_type(registry_url, db):
    device = create_device(registry_url)
    rule = create_rule(registry_url, device_id=device["id"], **RULE)
    resp = requests.post(f"{registry_url}/api/devices/{device['id']}/token", headers=ADMIN)
    assert resp.status_code == 200 and resp.json()["token"].startswith("vtd_"), resp.text
    resp = requests.post(f"{registry_url}/api/devices/{device['id']}/token",
                         headers={**ADMIN, "Content-Type": "text/plain"})
    assert resp.status_code == 200, resp.text
    assert requests.delete(f"{registry_url}/api/alert-rules/{rule['id']}", headers=ADMIN).status_code == 204
    assert requests.delete(f"{registry_url}/api/devices/{device['id']}", headers=ADMIN).status_code == 204
    assert _device_row(db, device["id"]) is None


def test_the_operator_token_is_checked_before_the_media_type(registry_url):
    body = json.dumps({"name": _name("auth")}).encode()
    resp = requests.post(f"{registry_url}/api/devices/", data=body, headers={"Content-Type": "text/plain"})
    assert resp.status_code == 401, resp.text
    resp = requests.post(f"{registry_url}/api/alert-rules/", data=body,
                         headers={**READER, "Content-Type": "text/plain"})
    assert resp.status_code == 403, resp.text


# --- input that once answered 500 ---------------------------------------------------------------------------


def test_ids_beyond_a_bigint_are_no_such_resource(registry_url, db):
    for path in ("/api/devices/99999999999999999999", f"/api/devices/{BIGINT_MAX + 1}",
                 f"/api/alert-rules/{BIGINT_MAX + 1}", "/api/alert-rules/99999999999999999999"):
        for method in ("GET", "PATCH", "DELETE"):
            resp = requests.request(method, f"{registry_url}{path}", json={"name": _name("big")}, headers=ADMIN)
            assert resp.status_code == 404 and resp.json()["error"] == "not_found", (method, path, resp.text)
    resp = requests.post(f"{registry_url}/api/devices/{BIGINT_MAX + 1}/token", headers=ADMIN)
    assert resp.status_code == 404, resp.text
    # the largest bigint is an id like any other: simply not there
    for path in (f"/api/devices/{BIGINT_MAX}", f"/api/alert-rules/{BIGINT_MAX}"):
        resp = requests.get(f"{registry_url}{path}", headers=ADMIN)
        assert resp.status_code == 404 and resp.json()["error"] == "not_found", resp.text


def _wide(number: int) -> str:
    """`number` in fullwidth digits, which int() and a regex's \\d read as ASCII ones."""
    return "".join(chr(0xFF10 + int(c)) for c in str(number))


def test_ids_in_paths_are_ascii_digits(registry_url):
    device = create_device(registry_url)
    rule = create_rule(registry_url, **RULE)
    for method, path in (("GET", f"/api/devices/{_wide(device['id'])}"),
                         ("PATCH", f"/api/devices/{_wide(device['id'])}"),
                         ("POST", f"/api/devices/{_wide(device['id'])}/token"),
                         ("GET", f"/api/alert-rules/{_wide(rule['id'])}"),
                         ("DELETE", f"/api/alert-rules/{_wide(rule['id'])}")):
        resp = requests.request(method, f"{registry_url}{path}", json={"location": "x"}, headers=ADMIN)
        assert resp.status_code == 404 and resp.json()["error"] == "not_found", (method, path, resp.text)
    assert requests.get(f"{registry_url}/api/devices/{device['id']}", headers=ADMIN).json()["location"] is None
    assert requests.get(f"{registry_url}/api/alert-rules/{rule['id']}", headers=ADMIN).status_code == 200


@pytest.mark.parametrize("value", [_wide(12), "\u0663", "1_0", "+5", " 5"])
@pytest.mark.parametrize("path,name", [("/api/devices/", "limit"), ("/api/alert-rules/", "limit"),
                                       ("/api/alert-rules/", "device_id")])
def test_integer_arguments_are_ascii_digits(registry_url, path, name, value):
    """int() reads other scripts' digits and underscores; an integer argument is ASCII digits only."""
    resp = requests.get(f"{registry_url}{path}", params={name: value}, headers=READER)
    assert resp.status_code == 400 and resp.json()["error"] == "validation_error", resp.text
    assert _fields(resp) == [name]


def test_a_nul_in_a_query_string_is_refused_naming_the_argument(registry_url):
    resp = requests.get(f"{registry_url}/api/devices/?q=a%00b", headers=READER)
    assert resp.status_code == 400 and resp.json()["error"] == "validation_error", resp.text
    assert _fields(resp) == ["q"]
    resp = requests.get(f"{registry_url}/api/alert-rules/?device_type=a%00b", headers=READER)
    assert resp.status_code == 400 and _fields(resp) == ["device_type"], resp.text


@pytest.mark.parametrize("extra,field", [
    ({"name": "a\u0000b"}, "name"),
    ({"metadata": {"a": ["b", "c\u0000"]}}, "metadata.a.1"),
    ({"location": "\u0000"}, "location"),
    ({"metadata": {"k\u0000": 1}}, "metadata.k\\u0000"),  # named, with the NUL spelt out
])
def test_a_nul_in_a_new_device_is_refused_naming_the_field(registry_url, db, extra, field):
    before = _count(db, "devices")
    resp = requests.post(f"{registry_url}/api/devices/", json={"name": _name("nul"), **extra}, headers=ADMIN)
    assert resp.status_code == 400 and resp.json()["error"] == "validation_error", resp.text
    assert _fields(resp) == [field]
    assert _count(db, "devices") == before


def test_a_nul_in_a_device_change_or_a_rule_is_refused_and_changes_nothing(registry_url, db):
    device = create_device(registry_url)
    before = _device_row(db, device["id"])
    resp = requests.patch(f"{registry_url}/api/devices/{device['id']}",
                          json={"location": "fine", "metadata": {"k": {"deep": "x\u0000"}}}, headers=ADMIN)
    assert resp.status_code == 400 and _fields(resp) == ["metadata.k.deep"], resp.text
    assert _device_row(db, device["id"]) == before
    name = _name("nul-rule")
    resp = requests.post(f"{registry_url}/api/alert-rules/", json={"name": name, "device_type": "p\u0000", **RULE},
                         headers=ADMIN)
    assert resp.status_code == 400 and _fields(resp) == ["device_type"], resp.text
    assert not _stored(db, "alert_rules", name)


NUL_MESSAGE = "must not contain a NUL (U+0000) character"
SURROGATE_MESSAGE = "must not contain a lone surrogate (U+D800 to U+DFFF): text must be valid Unicode"


def _details(resp) -> list:
    assert resp.status_code == 400 and resp.json()["error"] == "validation_error", resp.text
    return [(d["field"], d["message"]) for d in resp.json()["details"]]


def _post_raw(registry_url, path: str, raw: str, headers=ADMIN):
    """`raw` JSON text sent as is: the escapes in it are the client's, not json.dumps'."""
    return requests.post(f"{registry_url}{path}", data=raw.encode(),
                         headers={**headers, "Content-Type": "application/json"})


@pytest.mark.parametrize("raw,field", [
    ('"name": "a\\ud800b"', "name"),
    ('"name": "ok", "type": "\\udfff"', "type"),
    ('"name": "ok", "location": "\\uDC00"', "location"),  # escapes are case-insensitive
    ('"name": "ok", "metadata": {"a": [1, {"b": "\\uDbFf"}]}', "metadata.a.1.b"),
    ('"name": "ok", "metadata": {"k\\ud800": 1}', "metadata.k\\ud800"),  # named, with the surrogate spelt out
    ('"name": "\\ude00\\ud83d"', "name"),  # a pair in the wrong order is two lone surrogates
])
def test_a_lone_surrogate_in_a_new_device_is_refused_naming_the_field(registry_url, db, raw, field):
    """JSON may escape a lone surrogate, which Python parses into a str no UTF-8 encoder takes: psycopg2 raised
    UnicodeEncodeError, a 500."""
    before = _count(db, "devices")
    resp = _post_raw(registry_url, "/api/devices/", "{" + raw.replace('"ok"', f'"{_name("sur")}"') + "}")
    assert _details(resp) == [(field, SURROGATE_MESSAGE)]
    assert _count(db, "devices") == before


def test_a_lone_surrogate_in_a_device_change_or_a_rule_is_refused_and_changes_nothing(registry_url, db):
    device = create_device(registry_url)
    rule = create_rule(registry_url, **RULE)
    device_before, rule_before = _device_row(db, device["id"]), _rule_row(db, rule["id"])
    for path, body, field in [
        (f"/api/devices/{device['id']}", {"name": "x\ud800"}, "name"),
        (f"/api/devices/{device['id']}", {"location": "fine", "metadata": {"k": {"deep": "\udc00"}}},
         "metadata.k.deep"),
        (f"/api/alert-rules/{rule['id']}", {"name": "\ud800"}, "name"),
        (f"/api/alert-rules/{rule['id']}", {"device_type": "p\udfff"}, "device_type"),
    ]:
        resp = requests.patch(f"{registry_url}{path}", json=body, headers=ADMIN)
        assert _details(resp) == [(field, SURROGATE_MESSAGE)], (path, body)
    assert _device_row(db, device["id"]) == device_before
    assert _rule_row(db, rule["id"]) == rule_before
    for body, field in [({"name": "r\ud800"}, "name"), ({"name": _name("sur-rule"), "device_type": "\udbff"},
                                                        "device_type")]:
        before = _count(db, "alert_rules")
        resp = requests.post(f"{registry_url}/api/alert-rules/", json={**body, **RULE}, headers=ADMIN)
        assert _details(resp) == [(field, SURROGATE_MESSAGE)], body
        assert _count(db, "alert_rules") == before


def test_each_unstorable_character_gets_its_own_message(registry_url):
    resp = _post_raw(registry_url, "/api/devices/", '{"name": "a\\u0000b"}')
    assert _details(resp) == [("name", NUL_MESSAGE)]
    # the first field in the body that holds either is named
    resp = _post_raw(registry_url, "/api/devices/", '{"location": "\\ud800", "name": "\\u0000"}')
    assert _details(resp) == [("location", SURROGATE_MESSAGE)]


def test_escaped_text_that_is_storable_is_taken(registry_url, db):
    """The escapes the byte scan looks for are only a hint: a surrogate pair is one character, and an escaped
    backslash followed by `u0000` is six characters of text."""
    name = _name("pair")
    raw = (f'{{"name": "{name}\\ud83d\\uDE00", "location": "C:\\\\u0000", '
           '"metadata": {"\\uD83D\\ude00": "\\\\udfff"}}')
    resp = _post_raw(registry_url, "/api/devices/", raw)
    assert resp.status_code == 201, resp.text
    device = resp.json()
    assert device["name"] == name + "\U0001F600" and device["location"] == "C:\\u0000"
    assert device["metadata"] == {"\U0001F600": "\\udfff"}
    row = _device_row(db, device["id"])
    assert row[0] == name + "\U0001F600" and row[2] == "C:\\u0000" and row[3] == {"\U0001F600": "\\udfff"}


@pytest.mark.parametrize("path", ["/api/devices/", "/api/alert-rules/"])
def test_the_operator_token_is_checked_before_the_body_is_read(registry_url, db, path):
    """An unknown caller is told 401 (a reader 403) whatever the body holds: the registry does not walk a body
    for someone it will refuse anyway."""
    before = _count(db, "devices"), _count(db, "alert_rules")
    for raw in ('{"name": "a\\u0000b"}', '{"name": "\\ud800", "metadata": {"k": "\\u0000"}}'):
        assert _post_raw(registry_url, path, raw, headers={}).status_code == 401
        resp = _post_raw(registry_url, path, raw, headers={"Authorization": "Bearer not-a-token"})
        assert resp.status_code == 401 and resp.json()["error"] == "unauthorized", resp.text
        resp = _post_raw(registry_url, path, raw, headers=READER)
        assert resp.status_code == 403 and resp.json()["error"] == "forbidden", resp.text
    assert (_count(db, "devices"), _count(db, "alert_rules")) == before


def test_a_rule_device_id_beyond_a_bigint_is_refused_naming_it(registry_url, db):
    name = _name("big-rule")
    resp = requests.post(f"{registry_url}/api/alert-rules/", json={"name": name, "device_id": 2**70, **RULE},
                         headers=ADMIN)
    assert resp.status_code == 400 and resp.json()["error"] == "validation_error", resp.text
    assert "device_id" in _fields(resp)
    assert not _stored(db, "alert_rules", name)
    rule = create_rule(registry_url, **RULE)
    before = _rule_row(db, rule["id"])
    resp = requests.patch(f"{registry_url}/api/alert-rules/{rule['id']}", json={"device_id": 2**70}, headers=ADMIN)
    assert resp.status_code == 400 and "device_id" in _fields(resp), resp.text
    assert _rule_row(db, rule["id"]) == before
    resp = requests.get(f"{registry_url}/api/alert-rules/", params={"device_id": 2**70}, headers=READER)
    assert resp.status_code == 400 and _fields(resp) == ["device_id"], resp.text


def test_the_openapi_document_gives_the_status_argument_errors_answer(registry_url):
    spec = requests.get(f"{registry_url}/api/devices/openapi.json").json()
    responses = spec["paths"]["/api/devices/"]["post"]["responses"]
    assert "400" in responses and "422" not in responses and "415" in responses


@pytest.mark.parametrize("body", [b'{"name": "x", "metadata": {"n": ' + b"1" * 5000 + b"}}",
                                  b'{"name": "x", "metadata": ' + b"[" * 5000 + b"]" * 5000 + b"}"],
                         ids=["a-5000-digit-integer", "nesting-5000-deep"])
def test_a_body_too_large_to_read_is_malformed_json_not_a_500(registry_url, db, body):
    before = _count(db, "devices")
    resp = requests.post(f"{registry_url}/api/devices/", data=body,
                         headers={**ADMIN, "Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"] == "malformed_json", resp.text
    assert _count(db, "devices") == before
