"""The registry over real HTTP (gunicorn) against real Postgres and Redis."""
from __future__ import annotations

import uuid

import pytest
import requests

from tests.integration.api import ADMIN, READER
from visiontrack.tokens import changed_key


def _name(prefix: str = "dev") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _create(registry_url, **fields):
    body = {"name": _name(), **fields}
    resp = requests.post(f"{registry_url}/api/devices/", json=body, headers=ADMIN)
    assert resp.status_code == 201, resp.text
    return resp.json()


def test_register_returns_device_and_a_token_indexed_by_its_hash(registry_url, redis_client, db):
    device = _create(registry_url, type="thermo", location="lab", metadata={"floor": 3})
    assert device["token"].startswith("vtd_") and len(device["token"]) >= 40
    assert device["status"] == "active" and device["metadata"] == {"floor": 3}
    assert device["created_at"].endswith("Z") and device["last_seen_at"] is None
    import hashlib

    sha = hashlib.sha256(device["token"].encode()).hexdigest()
    assert redis_client.hget("vt:device-tokens", sha) == f"{device['id']}:active"
    with db.cursor() as cur:
        cur.execute("SELECT token_sha256 FROM device_tokens WHERE device_id = %s", (device["id"],))
        assert cur.fetchone()[0] == sha
    got = requests.get(f"{registry_url}/api/devices/{device['id']}", headers=READER).json()
    assert "token" not in got and got["name"] == device["name"]


def test_taken_name_is_a_conflict_naming_the_field(registry_url):
    device = _create(registry_url)
    resp = requests.post(f"{registry_url}/api/devices/", json={"name": device["name"]}, headers=ADMIN)
    assert resp.status_code == 409
    assert resp.json()["error"] == "conflict"
    assert resp.json()["details"] == [{"field": "name", "message": "is already taken"}]


def test_bad_bodies_get_400_naming_the_field_and_change_nothing(registry_url, db):
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM devices")
        before = cur.fetchone()[0]
    cases = [
        ({"name": ""}, "name"),
        ({"name": "x" * 129}, "name"),
        ({}, "name"),
        ({"name": _name(), "metadata": [1]}, "metadata"),
        ({"name": _name(), "colour": "red"}, "colour"),
    ]
    for body, field in cases:
        resp = requests.post(f"{registry_url}/api/devices/", json=body, headers=ADMIN)
        assert resp.status_code == 400, (body, resp.text)
        assert resp.json()["error"] == "validation_error"
        assert field in [d["field"] for d in resp.json()["details"]], resp.json()
    resp = requests.post(f"{registry_url}/api/devices/", data="{nope", headers={**ADMIN, "Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"] == "malformed_json"
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM devices")
        assert cur.fetchone()[0] == before


@pytest.mark.parametrize("body,field", [
    ({"name": 5}, "name"), ({"type": 5}, "type"), ({"location": True}, "location"), ({"location": 1.5}, "location"),
    ({"metadata": "{}"}, "metadata"), ({"metadata": [["k", 1]]}, "metadata"), ({"status": True}, "status"),
    ({"status": 1}, "status"), ({"name": ["x"]}, "name"),
])
def test_device_body_values_must_have_their_json_type(registry_url, db, body, field):
    """As for alert rules: no value is converted from another JSON type (a string is a JSON string)."""
    device = _create(registry_url)
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM devices")
        count = cur.fetchone()[0]
    resp = requests.post(f"{registry_url}/api/devices/", json={"name": _name(), **body}, headers=ADMIN)
    assert resp.status_code == 400 and resp.json()["error"] == "validation_error", resp.text
    assert field in [d["field"] for d in resp.json()["details"]], resp.text
    resp = requests.patch(f"{registry_url}/api/devices/{device['id']}", json=body, headers=ADMIN)
    assert resp.status_code == 400 and field in [d["field"] for d in resp.json()["details"]], resp.text
    assert requests.get(f"{registry_url}/api/devices/{device['id']}", headers=ADMIN).json() == \
        {k: v for k, v in device.items() if k != "token"}
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM devices")
        assert cur.fetchone()[0] == count


def test_operator_tokens_admin_writes_reader_reads(registry_url):
    assert requests.get(f"{registry_url}/api/devices/").status_code == 401
    assert requests.get(f"{registry_url}/api/devices/", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert requests.get(f"{registry_url}/api/devices/", headers=READER).status_code == 200
    resp = requests.post(f"{registry_url}/api/devices/", json={"name": _name()}, headers=READER)
    assert resp.status_code == 403 and resp.json()["error"] == "forbidden"


def test_keyset_pages_never_skip_or_repeat_and_filters_apply(registry_url):
    kind = f"kind-{uuid.uuid4().hex[:6]}"
    made = [_create(registry_url, type=kind, name=_name("pg"))["id"] for _ in range(7)]
    seen, cursor = [], None
    while True:
        params = {"type": kind, "limit": 3, **({"cursor": cursor} if cursor else {})}
        page = requests.get(f"{registry_url}/api/devices/", params=params, headers=READER).json()
        seen += [d["id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == made
    requests.patch(f"{registry_url}/api/devices/{made[0]}", json={"status": "disabled"}, headers=ADMIN)
    disabled = requests.get(f"{registry_url}/api/devices/", params={"type": kind, "status": "disabled"},
                            headers=READER).json()["items"]
    assert [d["id"] for d in disabled] == [made[0]]
    bad = requests.get(f"{registry_url}/api/devices/", params={"cursor": "garbage!"}, headers=READER)
    assert bad.status_code == 400 and bad.json()["details"][0]["field"] == "cursor"
    assert requests.get(f"{registry_url}/api/devices/", params={"limit": 0}, headers=READER).status_code == 400


def test_name_prefix_search(registry_url):
    prefix = f"pre-{uuid.uuid4().hex[:6]}"
    a = _create(registry_url, name=f"{prefix}-a")
    _create(registry_url)
    items = requests.get(f"{registry_url}/api/devices/", params={"q": prefix}, headers=READER).json()["items"]
    assert [d["id"] for d in items] == [a["id"]]


def test_disable_rotate_delete_keep_the_index_in_step(registry_url, redis_client, db):
    import hashlib

    device = _create(registry_url)
    sha = hashlib.sha256(device["token"].encode()).hexdigest()
    resp = requests.patch(f"{registry_url}/api/devices/{device['id']}", json={"status": "disabled", "location": "x"},
                          headers=ADMIN)
    assert resp.status_code == 200 and resp.json()["status"] == "disabled" and resp.json()["location"] == "x"
    assert redis_client.hget("vt:device-tokens", sha) == f"{device['id']}:disabled"
    token = requests.post(f"{registry_url}/api/devices/{device['id']}/token", headers=ADMIN).json()["token"]
    new_sha = hashlib.sha256(token.encode()).hexdigest()
    assert redis_client.hget("vt:device-tokens", sha) is None
    assert redis_client.hget("vt:device-tokens", new_sha) == f"{device['id']}:disabled"
    assert requests.delete(f"{registry_url}/api/devices/{device['id']}", headers=ADMIN).status_code == 204
    assert redis_client.hget("vt:device-tokens", new_sha) is None
    assert requests.get(f"{registry_url}/api/devices/{device['id']}", headers=ADMIN).status_code == 404
    with db.cursor() as cur:
        cur.execute("SELECT 1 FROM device_purges WHERE device_id = %s", (device["id"],))
        assert cur.fetchone() is not None
    assert requests.delete(f"{registry_url}/api/devices/{device['id']}", headers=ADMIN).status_code == 404


def test_unknown_ids_and_routes_answer_in_the_error_format(registry_url):
    resp = requests.get(f"{registry_url}/api/devices/999999999", headers=ADMIN)
    assert resp.status_code == 404 and resp.json()["error"] == "not_found"
    resp = requests.put(f"{registry_url}/api/devices/1", json={}, headers=ADMIN)
    assert resp.status_code == 405 and resp.json()["error"] == "method_not_allowed"
    assert set(resp.headers["Allow"].split(", ")) >= {"GET", "PATCH", "DELETE"}, "a 405 names what is allowed"


def test_openapi_document_is_served(registry_url):
    doc = requests.get(f"{registry_url}/api/devices/openapi.json").json()
    assert "/api/devices/" in doc["paths"] and "/api/devices/{device_id}/token" in doc["paths"]


def test_renaming_to_a_taken_name_is_a_conflict_and_changes_nothing(registry_url, db):
    taken, device = _create(registry_url), _create(registry_url)

    def row():
        with db.cursor() as cur:
            cur.execute("SELECT name, location, status, updated_at FROM devices WHERE id = %s", (device["id"],))
            return cur.fetchone()

    before = row()
    resp = requests.patch(f"{registry_url}/api/devices/{device['id']}",
                          json={"name": taken["name"], "location": "moved", "status": "disabled"}, headers=ADMIN)
    assert resp.status_code == 409 and resp.json()["error"] == "conflict", resp.text
    assert resp.json()["details"] == [{"field": "name", "message": "is already taken"}]
    assert row() == before
    # its own name is no conflict
    resp = requests.patch(f"{registry_url}/api/devices/{device['id']}", json={"name": device["name"]}, headers=ADMIN)
    assert resp.status_code == 200, resp.text


def test_health_and_readiness_need_no_token(registry_url):
    resp = requests.get(f"{registry_url}/healthz")
    assert resp.status_code == 200 and resp.json() == {"status": "ok"}
    resp = requests.get(f"{registry_url}/readyz")
    assert resp.status_code == 200 and resp.json() == {"status": "ready"}


@pytest.mark.parametrize("down", ["redis", "postgres"])
def test_readiness_is_503_naming_what_is_unreachable(base_env, down):
    """An app in this process whose Redis (or Postgres) URL points at a port nobody listens on."""
    import logging

    from registry.app import create_app
    from stack.servers import free_port
    from visiontrack import config as config_module

    closed = free_port()
    env = {**base_env, "REDIS_URL": f"redis://127.0.0.1:{closed}/0"} if down == "redis" else \
        {**base_env, "DATABASE_URL": f"postgresql://visiontrack@127.0.0.1:{closed}/visiontrack?connect_timeout=2"}
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        app = create_app(config_module.load(env))  # configures logging for the service: undone below
    finally:
        root.handlers[:], root.level = handlers, level
    svc = app.extensions["visiontrack"]
    try:
        client = app.test_client()
        assert client.get("/healthz").status_code == 200
        resp = client.get("/readyz")
        assert resp.status_code == 503 and resp.json["error"] == "unavailable", resp.json
        assert resp.json["message"] == f"not ready: {down} unreachable"
        assert resp.headers["Retry-After"] == "5"
    finally:
        svc.db.close()
        svc.redis.close()



# --- concurrent changes of one device: one lock order, so no deadlock and no 503 ------------------------------

ROUNDS = 30
INDEX = "vt:device-tokens"


def _race(*calls: tuple) -> list[requests.Response]:
    """Send these (method, url[, json body]) calls at once, one thread each, released together by a barrier."""
    import threading

    barrier = threading.Barrier(len(calls))
    answers: list = [None] * len(calls)

    def send(i: int, method: str, url: str, body=None) -> None:
        try:
            barrier.wait(timeout=10)
            answers[i] = requests.request(method, url, json=body, headers=ADMIN, timeout=30)
        except BaseException as exc:  # noqa: BLE001 - reported below
            answers[i] = exc

    threads = [threading.Thread(target=send, args=(i, *call), daemon=True) for i, call in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    for answer in answers:
        assert isinstance(answer, requests.Response), f"a racing call got no answer: {answer!r}"
    return answers


def _answer(resp: requests.Response) -> str:
    return (f"{resp.request.method} {resp.status_code} {resp.text.strip()[:120]} "
            f"(Retry-After {resp.headers.get('Retry-After')})")


def _sha(token: str) -> str:
    import hashlib

    return hashlib.sha256(token.encode()).hexdigest()


def _token_row(db, device_id: int) -> str | None:
    with db.cursor() as cur:
        cur.execute("SELECT token_sha256 FROM device_tokens WHERE device_id = %s", (device_id,))
        row = cur.fetchone()
    return row[0] if row else None


def test_deleting_a_device_while_its_token_rotates_never_deadlocks(registry_url, redis_client, db):
    """DELETE and POST .../token of one device at once, many times: the delete always succeeds (204), first or
    after the rotation; the rotation answers 200 (before the delete) or 404 (after it); never 503. Then the
    device is gone and no token of it, old or new, is left in the index."""
    bad = []
    for n in range(ROUNDS):
        device = _create(registry_url)
        url = f"{registry_url}/api/devices/{device['id']}"
        deleted, rotated = _race(("DELETE", url), ("POST", f"{url}/token"))
        problems = []
        if deleted.status_code != 204:
            problems.append(_answer(deleted))
        if rotated.status_code not in (200, 404) or \
                (rotated.status_code == 404 and rotated.json()["error"] != "not_found"):
            problems.append(_answer(rotated))
        shas = [_sha(device["token"])] + ([_sha(rotated.json()["token"])] if rotated.status_code == 200 else [])
        left = [sha for sha in shas if redis_client.hget(INDEX, sha) is not None]
        if left:
            problems.append(f"still in the token index: {left}")
        with db.cursor() as cur:
            cur.execute("SELECT (SELECT count(*) FROM devices WHERE id = %(d)s), "
                        "(SELECT count(*) FROM device_tokens WHERE device_id = %(d)s), "
                        "(SELECT count(*) FROM device_purges WHERE device_id = %(d)s)", {"d": device["id"]})
            rows = cur.fetchone()
        if rows != (0, 0, 1):
            problems.append(f"devices/device_tokens/device_purges rows: {rows}")
        if problems:
            bad.append((n, problems))
            requests.delete(url, headers=ADMIN)  # not left behind by a refused delete
    assert not bad, f"{len(bad)} of {ROUNDS} rounds went wrong; the first ones: {bad[:3]}"


def test_status_changes_racing_a_rotation_or_a_delete_keep_the_index_in_step(registry_url, redis_client, db):
    """A status change at once with a rotation: both succeed and the new token is indexed with the new status,
    the old one gone. Then a status change at once with the delete: 204, and 200 or 404; nothing left indexed."""
    bad = []
    for n in range(ROUNDS // 2):
        device = _create(registry_url)
        url = f"{registry_url}/api/devices/{device['id']}"
        patched, rotated = _race(("PATCH", url, {"status": "disabled"}), ("POST", f"{url}/token"))
        problems = [_answer(r) for r in (patched, rotated) if r.status_code != 200]
        shas = [_sha(device["token"])]
        if not problems:
            shas.append(_sha(rotated.json()["token"]))
            sha = _token_row(db, device["id"])
            if sha != shas[1] or redis_client.hget(INDEX, sha) != f"{device['id']}:disabled":
                problems.append(f"after rotate and disable: token {sha} indexed as {redis_client.hget(INDEX, sha)}")
            if redis_client.hget(INDEX, shas[0]) is not None:
                problems.append("the old token is still indexed")
        patched, deleted = _race(("PATCH", url, {"status": "active"}), ("DELETE", url))
        if deleted.status_code != 204:
            problems.append(_answer(deleted))
        if patched.status_code not in (200, 404):
            problems.append(_answer(patched))
        if requests.get(url, headers=ADMIN).status_code != 404 or _token_row(db, device["id"]) is not None or \
                any(redis_client.hget(INDEX, sha) is not None for sha in shas):
            problems.append("the device or a token of it is left after the delete")
        if problems:
            bad.append((n, problems))
            requests.delete(url, headers=ADMIN)
    assert not bad, f"{len(bad)} of {ROUNDS // 2} rounds went wrong; the first ones: {bad[:3]}"


def test_a_transaction_rolled_back_as_a_deadlock_victim_is_run_again(postgres, redis_client, db, caplog):
    """Another transaction taking the device's locks in the opposite order (its token row, then its devices
    row) deadlocks with a rotation; the rotation, which waits first and so is the one Postgres rolls back,
    runs again once the other commits, and succeeds."""
    import threading
    import time

    import psycopg2

    from registry.device_store import DeviceStore
    from visiontrack.db import Database

    key = f"test:token-index:{uuid.uuid4().hex[:8]}"
    store = DeviceStore(Database(postgres.url), redis_client, key)
    try:
        device = store.create({"name": _name("victim"), "type": None, "location": None, "metadata": {}})
        other = psycopg2.connect(postgres.url)
        try:
            with other.cursor() as cur:
                cur.execute("SELECT 1 FROM device_tokens WHERE device_id = %s FOR UPDATE", (device["id"],))
            outcome: dict = {}

            def rotate():
                try:
                    outcome["token"] = store.rotate_token(device["id"])
                except BaseException as exc:  # noqa: BLE001 - reported below
                    outcome["error"] = exc

            with caplog.at_level("WARNING", logger="registry.device_store"):
                rotating = threading.Thread(target=rotate, daemon=True)
                rotating.start()
                time.sleep(0.3)  # the rotation holds the devices row and waits for the token row
                with other.cursor() as cur:
                    cur.execute("SELECT 1 FROM devices WHERE id = %s FOR UPDATE", (device["id"],))
                other.commit()
                rotating.join(15)
            assert "error" not in outcome and "token" in outcome, outcome
            assert any("40P01" in r.getMessage() for r in caplog.records if r.name == "registry.device_store"), \
                "the rotation was not the deadlock victim, so it was not run again"
        finally:
            other.close()
        new = _sha(outcome["token"])
        assert _token_row(db, device["id"]) == new
        assert redis_client.hget(key, new) == f"{device['id']}:active"
        assert redis_client.hget(key, _sha(device["token"])) is None
        store.delete(device["id"])
    finally:
        store.db.close()
        redis_client.delete(key, changed_key(key))


@pytest.mark.parametrize("name,code", [("DeadlockDetected", "40P01"), ("SerializationFailure", "40001")])
def test_a_transaction_conflict_is_a_503_that_does_not_say_the_database_is_down(name, code, caplog):
    """In process, no server: a deadlock or serialization failure (TransactionRollbackError, an
    OperationalError) is reported as the conflict it is, retried after 1 s, logged as a WARNING; any other
    OperationalError is still "unreachable", logged as an ERROR."""
    import psycopg2
    import psycopg2.errors
    from flask import Flask

    from visiontrack.web import errors

    app = Flask("t")
    errors.register(app)

    @app.get("/raise/<name>")
    def raise_(name):
        raise psycopg2.OperationalError("server closed the connection") if name == "OperationalError" else \
            getattr(psycopg2.errors, name)(f"{name.lower()}\nDETAIL: Process 1 waits for ShareLock")

    client = app.test_client()
    resp = client.get(f"/raise/{name}")
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
    assert resp.json == {"error": "unavailable", "details": [],
                         "message": "a concurrent change conflicted with this request; retry"}
    assert [r.levelname for r in caplog.records if r.name == "visiontrack.web"] == ["WARNING"]
    assert isinstance(getattr(psycopg2.errors, name)(), psycopg2.errors.TransactionRollbackError)
    assert psycopg2.errors.lookup(code) is getattr(psycopg2.errors, name)
    caplog.clear()
    resp = client.get("/raise/OperationalError")
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "5"
    assert resp.json["message"] == "the database is unreachable; retry later"
    assert [r.levelname for r in caplog.records if r.name == "visiontrack.web"] == ["ERROR"]
