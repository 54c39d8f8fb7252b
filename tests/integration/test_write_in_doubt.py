"""A write whose answer is lost: the connection between the ingestor and Redis closes after the XADD was sent
and before its reply came back (as when Redis is killed, or shuts down, right after running it). The ingestor
must then answer by what Redis holds: 202 when the entry is in, 503 when it is not, never 503 for readings
that are stored. So must `POST /api/telemetry/`'s writer. A proxy in front of the real Redis cuts the
connection at that moment."""
from __future__ import annotations

import socket
import threading
import time
import uuid
from types import SimpleNamespace

import pytest
import redis
import requests

from tests.integration.test_mqtt import INGESTOR_BINARY, Ingestor
from visiontrack.errors import ApiError
from visiontrack.stream_writer import StreamWriter


class ReplyCutter:
    """A TCP proxy to Redis. Armed, it takes the next chunk holding an XADD, lets it through or not, and closes
    both sides before any reply is passed back."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed: str | None = None  # "deliver" (Redis runs it) or "swallow" (Redis never sees it)
        self.cuts = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, mode: str) -> None:
        with self.lock:
            self.armed = mode

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            cut = threading.Event()
            threading.Thread(target=self._to_redis, args=(client, upstream, cut), daemon=True).start()
            threading.Thread(target=self._to_client, args=(upstream, client, cut), daemon=True).start()

    def _to_redis(self, client: socket.socket, upstream: socket.socket, cut: threading.Event) -> None:
        while data := _recv(client):
            with self.lock:
                mode = self.armed if b"XADD" in data else None
                if mode:
                    self.armed = None
            if mode:
                self.cuts += 1
                cut.set()  # from now on nothing goes back to the ingestor
                if mode == "deliver":
                    upstream.sendall(data)
                    time.sleep(0.2)  # Redis runs it and answers; the answer goes nowhere
                break
            upstream.sendall(data)
        for sock in (client, upstream):
            _shut(sock)

    @staticmethod
    def _to_client(upstream: socket.socket, client: socket.socket, cut: threading.Event) -> None:
        while (data := _recv(upstream)) and not cut.is_set():
            client.sendall(data)
        for sock in (client, upstream):
            _shut(sock)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@pytest.fixture(scope="module")
def cutter(redis_server):
    proxy = ReplyCutter(redis_server.port)
    yield proxy
    proxy.close()


@pytest.fixture(scope="module", params=["256", "1"], ids=["grouped", "an-entry-per-request"])
def ingestor(request, redis_server, base_env, run_dir, cutter):
    if not INGESTOR_BINARY.exists():
        pytest.skip(f"ingestor binary not built ({INGESTOR_BINARY}); run `make ingestor-build`")
    server = Ingestor(redis_server, base_env, run_dir, VT_WORKER_THREADS="1", VT_RATE_LIMIT="0",
                      VT_STREAM_ENTRY_MAX_REQUESTS=request.param)
    server.env["REDIS_URL"] = f"redis://127.0.0.1:{cutter.port}/{server.db}"
    server.start()
    yield server
    server.stop()
    server.redis.flushdb()


def _post(server: Ingestor, token: str, ts: int) -> requests.Response:
    return requests.post(f"http://127.0.0.1:{server.http_port}/api/ingest", json={"ts": ts, "values": {"t": 1.5}},
                         headers={"Authorization": f"Bearer {token}"}, timeout=15)


def _stored(server: Ingestor, device: int, ts: int) -> int:
    return sum(1 for reading in server.readings(device) if reading[1] == ts)


def _cut_during(server: Ingestor, cutter: ReplyCutter, mode: str, device: int) -> tuple[requests.Response, int]:
    token = server.device(device)
    assert _post(server, token, int(time.time() * 1000) - 5_000).status_code == 202  # connected, token cached
    cuts = cutter.cuts
    cutter.arm(mode)
    ts = int(time.time() * 1000) - 1_000
    response = _post(server, token, ts)
    assert cutter.cuts == cuts + 1, "the proxy saw no XADD to cut"
    return response, _stored(server, device, ts)


def test_an_entry_written_before_the_connection_dropped_is_answered_202(ingestor, cutter):
    response, stored = _cut_during(ingestor, cutter, "deliver", 9_100_001)
    assert (response.status_code, stored) == (202, 1), response.text
    assert 'visiontrack_ingestor_writes_in_doubt_total{outcome="stored"}' in ingestor.metrics()


def test_an_entry_that_never_reached_redis_is_answered_503(ingestor, cutter):
    response, stored = _cut_during(ingestor, cutter, "swallow", 9_100_002)
    assert (response.status_code, stored) == (503, 0), response.text
    assert response.headers.get("Retry-After")
    assert 'visiontrack_ingestor_writes_in_doubt_total{outcome="not_stored"}' in ingestor.metrics()


def test_after_a_cut_the_ingestor_writes_as_before(ingestor, cutter):
    token = ingestor.device(9_100_003)
    ts = int(time.time() * 1000) - 500
    assert _post(ingestor, token, ts).status_code == 202
    assert _stored(ingestor, 9_100_003, ts) == 1


@pytest.fixture
def writer(redis_server, cutter):
    """The writer of `POST /api/telemetry/`, on a stream of its own, talking to Redis through the proxy."""
    config = SimpleNamespace(stream_key=f"vt:doubt-test:{uuid.uuid4().hex[:8]}", stream_shards=1,
                             stream_group="aggregators", stream_high_water=100_000, backlog_check_ms=500,
                             retry_after_seconds=1, stream_wait_replicas=0, stream_wait_timeout_ms=500)
    # As the services build theirs (visiontrack/web/app.py): from a URL, so redis-py does not resend by itself.
    client = redis.Redis.from_url(f"redis://127.0.0.1:{cutter.port}/0", socket_timeout=2, socket_connect_timeout=2,
                                  health_check_interval=30)
    yield StreamWriter(client, config)
    direct = redis.Redis(port=redis_server.port)
    direct.delete(config.stream_key)
    client.close()
    direct.close()


def _append_cut(writer: StreamWriter, cutter: ReplyCutter, mode: str) -> tuple[str | None, int]:
    writer.append(7, [("t", 1, 1.0)], 1)  # connected
    cuts = cutter.cuts
    cutter.arm(mode)
    try:
        outcome = writer.append(7, [("t", 2, 2.0)], 2)
    except ApiError as error:
        outcome = f"{error.status} {error.code}"
    assert cutter.cuts == cuts + 1, "the proxy saw no XADD to cut"
    return outcome, redis.Redis(port=cutter.upstream_port).xlen(writer.base_key)


def test_the_python_writer_answers_by_what_redis_holds_when_the_reply_is_lost(writer, cutter):
    entry_id, entries = _append_cut(writer, cutter, "deliver")
    assert entries == 2 and entry_id and "-" in entry_id, entry_id


def test_the_python_writer_refuses_a_write_that_never_reached_redis(writer, cutter):
    outcome, entries = _append_cut(writer, cutter, "swallow")
    assert (outcome, entries) == ("503 unavailable", 1)
