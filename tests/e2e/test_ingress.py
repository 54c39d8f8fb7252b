"""End to end over HTTP through nginx, routed like the Kubernetes Ingress, with real Celery processes; or
through a deployment's ingress (tests/e2e/conftest.py), where the local nginx's own checks are skipped."""
from __future__ import annotations

import json
import socket
import ssl
import time
import uuid
from urllib.parse import urlsplit

import pytest
import requests
from requests.structures import CaseInsensitiveDict

from stack.nginx import Nginx, max_body_bytes
from stack.servers import free_port
from tests.conftest import poll
from tests.e2e.conftest import ADMIN, READER, TARGET, local_aggregator, needs_ingestor

# Behind TLS the services' redirects say http:// (docs/kubernetes.md, "Host").
plain_http_only = pytest.mark.skipif((TARGET.url or "http:").startswith("https:"),
                                     reason="behind TLS the trailing-slash redirect says http://")


@pytest.fixture(scope="module")
def aggregator(request):
    yield from local_aggregator(request)


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


@pytest.mark.local_ingress
def test_unknown_paths_answer_in_the_error_format(ingress):
    resp = requests.get(f"{ingress}/api/nothing-here")
    assert resp.status_code == 404
    assert resp.json() == {"error": "not_found", "message": "no such resource", "details": []}


@pytest.mark.local_ingress
def test_a_body_over_the_ingress_limit_is_refused_in_the_error_format(ingress):
    resp = requests.post(f"{ingress}/api/telemetry/", data=b"[" + b" " * (3 << 20) + b"]",
                         headers={**ADMIN, "Content-Type": "application/json"})
    assert resp.status_code == 413 and resp.json()["error"] == "payload_too_large"


@pytest.mark.local_ingress
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


@needs_ingestor
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


@needs_ingestor
def test_a_deleted_device_is_refused_and_its_telemetry_purged_through_the_ingress(ingress, aggregator):
    device = _register(ingress)
    token = {"Authorization": f"Bearer {device['token']}"}
    assert requests.post(f"{ingress}/api/ingest", json={"temperature": 7.5}, headers=token).status_code == 202
    _read_all(ingress, device["id"], 1)
    assert requests.delete(f"{ingress}/api/devices/{device['id']}", headers=ADMIN).status_code == 204

    poll(lambda: requests.post(f"{ingress}/api/ingest", json={"temperature": 8.5}, headers=token).status_code == 401,
         timeout=15, interval=0.5, what="the deleted device's token refused")

    def purged() -> bool:
        params = {"device_id": device["id"]}
        raw = requests.get(f"{ingress}/api/telemetry/", params=params, headers=READER)
        latest = requests.get(f"{ingress}/api/telemetry/latest", params=params, headers=READER)
        return all(r.status_code == 404 or (r.status_code == 200 and not r.json().get("items"))
                   for r in (raw, latest))

    # The purge runs on the aggregator's schedule (every 30 s).
    poll(purged, timeout=90, interval=1, what="the deleted device's telemetry purged")


@pytest.mark.parametrize("path", ["/api/telemetry/", "/api/alerts/"])
def test_a_time_range_that_ends_before_it_starts_is_refused_naming_to(ingress, path):
    resp = requests.get(f"{ingress}{path}", headers=READER,
                        params={"from": "2026-11-27T03:00:00Z", "to": "2026-11-27T02:00:00Z"})
    assert resp.status_code == 400
    assert resp.json()["details"] == [{"field": "to", "message": "must be later than from"}]
    same = requests.get(f"{ingress}{path}", headers=READER,
                        params={"from": "2026-11-27T03:00:00Z", "to": "2026-11-27T03:00:00Z"})
    assert same.status_code == 400


# --- the ingress's own refusals, and what it forwards ----------------------------------------------------

def _api_error(status: int, headers, body: bytes) -> dict:
    """The body of an error answer, checked to be the API's shape (not an HTML or text page)."""
    assert headers.get("Content-Type", "").startswith("application/json"), (status, body[:200])
    error = json.loads(body)
    assert set(error) == {"error", "message", "details"} and error["details"] == [], error
    return error


def _connect(ingress: str) -> socket.socket:
    url = urlsplit(ingress)
    tls = url.scheme == "https"
    sock = socket.create_connection((url.hostname, url.port or (443 if tls else 80)), timeout=10)
    return ssl.create_default_context().wrap_socket(sock, server_hostname=url.hostname) if tls else sock


def _send(ingress: str, request: bytes) -> tuple[int, dict, bytes]:
    """One request sent byte for byte (no client library re-quotes or fixes it); the server closes after it."""
    answer = b""
    with _connect(ingress) as sock:
        sock.sendall(request)
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = CaseInsensitiveDict(line.split(": ", 1) for line in lines)
    return int(status_line.split(" ")[1]), headers, body


def _get(ingress: str, target: str, version: str = "HTTP/1.1", extra: str = "") -> tuple[int, dict, bytes]:
    return _send(ingress, f"GET {target} {version}\r\nHost: {urlsplit(ingress).netloc}\r\n"
                          f"Authorization: {READER['Authorization']}\r\nConnection: close\r\n{extra}\r\n".encode())


@pytest.mark.local_ingress  # nginx holds the ingestor's limit; the limit is read from the local environment
@needs_ingestor
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_the_ingestor_limit_gets_413_in_the_error_format_every_time(ingress, chunked):
    # The ingestor refuses on Content-Length and closes without reading the body; nginx, still sending it,
    # used to get a broken pipe and answer 503 instead. Intermittent, hence the repeats.
    token = {"Authorization": f"Bearer {_register(ingress)['token']}", "Content-Type": "application/json"}
    limit = max_body_bytes()
    body = b"[" + b" " * (limit + limit // 2) + b"]"
    for _ in range(10):
        data = iter([body[i:i + 65536] for i in range(0, len(body), 65536)]) if chunked else body
        resp = requests.post(f"{ingress}/api/ingest", data=data, headers=token)
        assert resp.status_code == 413, (resp.status_code, resp.text)
        assert _api_error(413, resp.headers, resp.content) == {
            "error": "payload_too_large", "message": f"body exceeds {limit} bytes", "details": []}


@pytest.mark.local_ingress
@needs_ingestor
def test_the_ingress_takes_a_body_of_exactly_the_ingestor_limit(ingress):
    token = {"Authorization": f"Bearer {_register(ingress)['token']}", "Content-Type": "application/json"}
    limit = max_body_bytes()
    reading = b'{"values": {"t": 1}}'
    resp = requests.post(f"{ingress}/api/ingest", data=reading + b" " * (limit - len(reading)), headers=token)
    assert resp.status_code == 202, resp.text
    resp = requests.post(f"{ingress}/api/ingest", data=reading + b" " * (limit + 1 - len(reading)), headers=token)
    assert resp.status_code == 413 and resp.json()["error"] == "payload_too_large"


@pytest.mark.parametrize("path, headers, expected", [
    ("/api/telemetry/", {"Authorization": "Bearer vtd_unknown", "Content-Type": "application/json"}, 401),
    ("/api/devices/", {**ADMIN, "Content-Type": "text/plain"}, 415),
], ids=["query-401", "registry-415"])
def test_a_service_refusing_a_body_it_did_not_read_is_answered_every_time(ingress, path, headers, expected):
    # gunicorn drained only 64 KiB of a body the app left unread before closing: nginx, still sending it, got
    # a reset and answered 503 instead.
    body = b"[" + b" " * ((2 << 20) - 4096) + b"]"  # under nginx's 2m
    for _ in range(20):
        resp = requests.post(f"{ingress}{path}", data=body, headers=headers)
        assert resp.status_code == expected, (resp.status_code, resp.text)


@needs_ingestor
def test_the_ingestor_refusing_a_body_it_did_not_read_is_answered_every_time(ingress):
    """It refuses the token before reading the body, then reads the body before closing: closing on unread
    bytes reset the connection under nginx, still sending, which answered 503 instead."""
    body = b"[" + b" " * ((1 << 20) - 2) + b"]"
    for _ in range(20):
        resp = requests.post(f"{ingress}/api/ingest", data=body,
                             headers={"Authorization": "Bearer vtd_unknown", "Content-Type": "application/json"})
        assert resp.status_code == 401, (resp.status_code, resp.text)


@pytest.mark.local_ingress
def test_a_method_nginx_refuses_itself_gets_405_in_the_error_format(ingress):
    resp = requests.request("TRACE", f"{ingress}/api/devices/", headers=READER)
    assert resp.status_code == 405
    assert _api_error(405, resp.headers, resp.content) == {
        "error": "method_not_allowed", "message": "method not allowed for this resource", "details": []}
    # A 405 must name the methods the resource takes (RFC 9110 15.5.6): nginx names every method of the API.
    assert [m.strip() for m in resp.headers.get("Allow", "").split(",")] == [
        "GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS"]


def test_a_method_a_part_does_not_take_gets_its_own_405_through_the_ingress(ingress):
    resp = requests.put(f"{ingress}/api/devices/", headers=ADMIN)
    assert resp.status_code == 405 and resp.json()["error"] == "method_not_allowed"


@pytest.mark.parametrize("line_length", [5000, 8190])
def test_a_request_line_nginx_takes_reaches_the_service(ingress, line_length):
    # gunicorn used to refuse lines over 4094 bytes with its own HTML page, under nginx's 8k.
    prefix = "/api/devices/?type="
    target = prefix + "a" * (line_length - len(f"GET {prefix} HTTP/1.1"))
    status, _, body = _get(ingress, target)
    assert status == 200 and json.loads(body)["items"] == [], (status, body[:200])


@pytest.mark.local_ingress
@pytest.mark.parametrize("line_length", [8191, 9000])
def test_a_request_line_over_nginx_buffers_gets_414_in_the_error_format(ingress, line_length):
    prefix = "/api/devices/?type="
    status, headers, body = _get(ingress, prefix + "a" * (line_length - len(f"GET {prefix} HTTP/1.1")))
    assert status == 414
    assert _api_error(status, headers, body)["error"] == "validation_error"


@pytest.mark.parametrize("extra", [
    "X-Padding: " + "a" * (8190 - len("X-Padding: ")) + "\r\n",  # the longest header line nginx takes
    "".join(f"X-Forwarded-For: {'1' * 7000}\r\n" for _ in range(4)),  # nginx used to join them into one
    "".join(f"X-Header-{i}: {i}\r\n" for i in range(200)),  # gunicorn took 100 header lines
], ids=["long-line", "x-forwarded-for", "many-lines"])
def test_headers_nginx_takes_reach_the_service(ingress, extra):
    status, _, body = _get(ingress, "/api/devices/?type=none", extra=extra)
    assert status == 200 and json.loads(body)["items"] == [], (status, body[:200])


@pytest.mark.local_ingress
def test_a_header_too_large_for_nginx_gets_431_in_the_error_format(ingress):
    resp = requests.get(f"{ingress}/api/devices/", headers={**READER, "X-Padding": "a" * 9000})
    assert resp.status_code == 431
    assert _api_error(431, resp.headers, resp.content)["error"] == "validation_error"


@pytest.mark.local_ingress
@pytest.mark.parametrize("target, version, extra, expected", [
    ("/api/devices/%ZZ", "HTTP/1.1", "", 400),
    ("/api/devices/", "HTTP/2.0", "", 505),
    ("/api/devices/", "HTTP/1.1", "Transfer-Encoding: gzip\r\n", 501),
    ("/_ingress/400", "HTTP/1.1", "", 404),  # the error pages' own locations are internal
], ids=["bad-escape", "http-version", "transfer-coding", "error-page-uri"])
def test_a_request_nginx_refuses_itself_is_answered_in_the_error_format(ingress, target, version, extra, expected):
    status, headers, body = _get(ingress, target, version, extra)
    assert status == expected
    _api_error(status, headers, body)


@plain_http_only
def test_the_trailing_slash_redirect_keeps_the_port(ingress):
    resp = requests.get(f"{ingress}/api/devices", headers=READER, allow_redirects=False)
    assert resp.status_code == 308 and resp.headers["Location"] == f"{ingress}/api/devices/"


@pytest.mark.local_ingress  # nginx names its own address; a controller routing by host needs a Host
def test_the_trailing_slash_redirect_of_a_request_without_host_names_the_ingress(ingress):
    # HTTP/1.0 needs no Host: the redirect must name the address the client reached, not the upstream's.
    request = f"GET /api/devices HTTP/1.0\r\nAuthorization: {READER['Authorization']}\r\n\r\n"
    status, headers, _ = _send(ingress, request.encode())
    assert status == 308 and headers["Location"] == f"{ingress}/api/devices/"


@plain_http_only
@pytest.mark.parametrize("extra", [
    "X-Forwarded-Proto: https\r\n",
    "X-Forwarded-Proto: https\r\nX-Forwarded-Ssl: on\r\n",
    "X-Forwarded-Protocol: ssl\r\n",
], ids=["proto", "contradictory", "protocol"])
def test_the_scheme_of_the_redirect_is_the_ingress_own_not_what_the_client_claims(ingress, extra):
    # gunicorn trusts these headers from nginx's address: a client's own used to turn the redirect to https,
    # or, contradicting each other, into gunicorn's HTML 400.
    status, headers, _ = _get(ingress, "/api/devices", extra=extra)
    assert status == 308 and headers["Location"] == f"{ingress}/api/devices/"
