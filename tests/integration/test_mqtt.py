"""MQTT against the real ingestor binary and a real Redis, with paho-mqtt as the device: MQTT 3.1.1 and 5,
QoS 0 and 1, the three payload shapes, refused tokens, revocation of a live connection, QoS 2, backpressure,
poison payloads, and a SIGKILL with QoS 1 messages in flight (stored exactly once, through the aggregator)."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
import redis
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from stack.servers import free_port
from stack.services import INGESTOR_BINARY, Process
from tests.conftest import poll
from visiontrack.stream import PoisonEntry, decode_entry

TOPIC = "v1/devices/me/telemetry"
V311, V5 = mqtt.MQTTv311, mqtt.MQTTv5


def _field(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Ingestor:
    """The ingestor binary on free ports, HTTP and MQTT, with a Redis database, stream and token index of
    its own."""

    def __init__(self, redis_server, base_env: dict, run_dir, **env: str):
        self.db = 1 + (uuid.uuid4().int % 14)
        self.url = redis_server.url.rsplit("/", 1)[0] + f"/{self.db}"
        self.redis = redis.Redis.from_url(self.url, decode_responses=True)
        tag = uuid.uuid4().hex[:8]
        self.stream = f"vt:mqtt-test:{tag}"
        self.index = f"vt:mqtt-tokens:{tag}"
        self.http_port, self.mqtt_port = free_port(), free_port()
        self.env = {**base_env, "REDIS_URL": self.url, "VT_STREAM_KEY": self.stream, "VT_TOKEN_INDEX_KEY": self.index,
                    "VT_LISTEN_ADDR": f"127.0.0.1:{self.http_port}", "VT_MQTT_ADDR": f"127.0.0.1:{self.mqtt_port}",
                    "VT_WORKER_THREADS": "2", "VT_TOKEN_CACHE_SECONDS": "2", **env}
        self.proc = Process(f"ingestor-mqtt-{tag}", "ingestor", self.env, run_dir / "logs" / f"ingestor-mqtt-{tag}.log")
        self.run_dir = run_dir

    def start(self) -> "Ingestor":
        self.proc.start(self.run_dir)
        self.proc.wait_http(self.http_port)
        return self

    def stop(self) -> None:
        self.proc.stop()

    def device(self, device_id: int, status: str = "active") -> str:
        token = f"vtd_mqtt_{uuid.uuid4().hex}"
        self.redis.hset(self.index, _field(token), f"{device_id}:{status}")
        return token

    def readings(self, device_id: int | None = None) -> list[list]:
        out = []
        for entry_id, fields in self.redis.xrange(self.stream, "-", "+"):
            try:
                entries = decode_entry(entry_id, fields)  # an entry may hold several devices' PUBLISHes
            except PoisonEntry:  # filler some tests write to raise the backlog
                continue
            out.extend(r for e in entries if device_id is None or e.device_id == device_id for r in e.readings)
        return out

    def metrics(self) -> str:
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5) as resp:
            return resp.read().decode()


@pytest.fixture(scope="module")
def ingestor(redis_server, base_env, run_dir):
    if not INGESTOR_BINARY.exists():
        pytest.skip(f"ingestor binary not built ({INGESTOR_BINARY}); run `make ingestor-build`")
    server = Ingestor(redis_server, base_env, run_dir, VT_MQTT_AUTH_RECHECK_MS="500").start()
    yield server
    server.stop()
    server.redis.flushdb()


class Device:
    """A paho client with what the tests wait for: the CONNACK, each PUBACK (mid -> reason code), the close."""

    def __init__(self, port: int, token: str | None, protocol=V5, client_id: str = "", clean: bool = True,
                 host: str = "127.0.0.1"):
        self.protocol = protocol
        kwargs = {"protocol": protocol, "client_id": client_id or f"c-{uuid.uuid4().hex[:8]}"}
        if protocol == V311:
            kwargs["clean_session"] = clean
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        if token is not None:
            self.client.username_pw_set(token)
        self.host, self.port, self.clean = host, port, clean
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connack = None
        self.connack_props = None
        self.disconnect_reason = None
        self.acks: dict[int, int] = {}
        self.lock = threading.Lock()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack, self.connack_props = reason_code.value, properties
        if reason_code.value == 0:
            self.disconnected.clear()
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnect_reason = reason_code.value
        self.disconnected.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self.lock:
            self.acks[mid] = reason_code.value

    def connect(self, expect_ok: bool = True) -> "Device":
        props = None
        if self.protocol == V5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 0 if self.clean else 3600
            self.client.connect(self.host, self.port, keepalive=30, clean_start=self.clean, properties=props)
        else:
            self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(10), "no CONNACK"
        if expect_ok:
            assert self.connack == 0, f"CONNACK {self.connack}"
        return self

    def publish(self, payload, qos: int = 1, topic: str = TOPIC) -> int:
        body = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
        return self.client.publish(topic, body, qos=qos).mid

    def ack(self, mid: int, timeout: float = 10.0) -> int:
        return poll(lambda: self.acks.get(mid, -1) + 1, timeout=timeout, what=f"PUBACK of {mid}") - 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _raw_connack(port: int, username: bytes | None) -> bytes:
    """A raw MQTT 3.1.1 CONNECT; the four bytes of the CONNACK (the return code is the last)."""
    flags = 0x02 | (0x80 if username is not None else 0)
    body = b"\x00\x04MQTT\x04" + bytes([flags]) + b"\x00\x1e" + b"\x00\x02c1"
    if username is not None:
        body += len(username).to_bytes(2, "big") + username
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(bytes([0x10, len(body)]) + body)
        got = b""
        while len(got) < 4:
            chunk = s.recv(4 - len(got))
            if not chunk:
                break
            got += chunk
        return got


@pytest.mark.parametrize("protocol", [V311, V5], ids=["3.1.1", "5"])
def test_qos_0_and_1_store_every_payload_shape(ingestor, protocol):
    device_id = 9_100_000 + protocol
    dev = Device(ingestor.mqtt_port, ingestor.device(device_id), protocol).connect()
    now = int(time.time() * 1000)
    mids = [
        dev.publish({"temperature": 21.5}),
        dev.publish({"ts": now - 1000, "values": {"humidity": 40, "door": True}}),
        dev.publish([{"ts": now - 2000, "a": 1}, {"ts": now - 3000, "values": {"b": 2}}], topic="vt/telemetry"),
    ]
    assert [dev.ack(m) for m in mids] == [0, 0, 0]
    dev.publish({"ts": now - 4000, "q0": 7}, qos=0)
    got = poll(lambda: (r := ingestor.readings(device_id)) and len(r) == 6 and r, what="six readings")
    dev.close()
    by_metric = {m: (ts, v) for m, ts, v in got}
    assert by_metric["humidity"] == (now - 1000, 40) and by_metric["door"] == (now - 1000, 1)
    assert by_metric["a"] == (now - 2000, 1) and by_metric["b"] == (now - 3000, 2)
    assert by_metric["q0"] == (now - 4000, 7) and by_metric["temperature"][1] == 21.5
    text = ingestor.metrics()
    assert 'visiontrack_ingestor_mqtt_messages_total{qos="1",result="accepted"}' in text
    assert 'visiontrack_ingestor_mqtt_messages_total{qos="0",result="accepted"}' in text
    assert "visiontrack_ingestor_mqtt_puback_latency_seconds_bucket" in text


def test_311_connack_codes_are_4_without_a_token_and_5_for_a_bad_one(ingestor):
    assert _raw_connack(ingestor.mqtt_port, None) == b"\x20\x02\x00\x04"
    assert _raw_connack(ingestor.mqtt_port, b"vtd_nobody") == b"\x20\x02\x00\x05"
    disabled = ingestor.device(9_100_010, "disabled")
    assert _raw_connack(ingestor.mqtt_port, disabled.encode()) == b"\x20\x02\x00\x05"
    assert _raw_connack(ingestor.mqtt_port, ingestor.device(9_100_011).encode()) == b"\x20\x02\x00\x00"


def test_5_connack_codes_are_0x86_without_a_token_and_0x87_for_a_bad_one(ingestor):
    assert Device(ingestor.mqtt_port, None).connect(expect_ok=False).connack == 0x86
    assert Device(ingestor.mqtt_port, "vtd_nobody").connect(expect_ok=False).connack == 0x87
    ok = Device(ingestor.mqtt_port, ingestor.device(9_100_012)).connect()
    assert ok.connack_props.MaximumQoS == 1
    assert ok.connack_props.ReceiveMaximum >= 1
    ok.close()


@pytest.mark.parametrize("change", ["disable", "delete"])
def test_a_revoked_device_is_disconnected_within_5_seconds(ingestor, change):
    device_id = 9_100_020 + len(change)
    token = ingestor.device(device_id)
    v5, v311 = (Device(ingestor.mqtt_port, token, p).connect() for p in (V5, V311))
    if change == "disable":
        ingestor.redis.hset(ingestor.index, _field(token), f"{device_id}:disabled")
    else:
        ingestor.redis.hdel(ingestor.index, _field(token))
    t0 = time.monotonic()
    assert v5.disconnected.wait(5) and v311.disconnected.wait(5 - (time.monotonic() - t0) + 0.1)
    assert v5.disconnect_reason == 0x87
    for d in (v5, v311):
        d.client.loop_stop()


def test_qos_2_is_refused(ingestor):
    token = ingestor.device(9_100_030)
    v5 = Device(ingestor.mqtt_port, token, V5).connect()
    v5.publish({"a": 1}, qos=2)
    assert v5.disconnected.wait(5)
    assert v5.disconnect_reason == 0x9B  # QoS not supported
    v311 = Device(ingestor.mqtt_port, token, V311).connect()
    v311.publish({"a": 1}, qos=2)
    assert v311.disconnected.wait(5), "3.1.1 cannot be told: the connection is closed"
    for d in (v5, v311):
        d.client.loop_stop()
    time.sleep(0.3)
    assert ingestor.readings(9_100_030) == []


def test_poison_payloads_are_answered_and_never_stored(ingestor):
    device_id = 9_100_040
    token = ingestor.device(device_id)
    v5 = Device(ingestor.mqtt_port, token, V5).connect()
    bad = [b"{", b"", b'{"9bad": 1}', b'{"a": "text"}', b"[]", json.dumps({"a": 1, "ts": 1}).encode()]
    assert [v5.ack(v5.publish(p)) for p in bad] == [0x99] * len(bad)
    assert v5.ack(v5.publish({"a": 1}, topic="v1/devices/me/attributes")) == 0x87
    assert v5.ack(v5.publish({"good": 1})) == 0
    v311 = Device(ingestor.mqtt_port, token, V311).connect()
    # 3.1.1 has no negative PUBACK: a poison message is acknowledged, counted, dropped; never resent.
    assert [v311.ack(v311.publish(p)) for p in bad] == [0] * len(bad)
    assert v311.ack(v311.publish({"good": 2})) == 0
    assert not v311.disconnected.is_set()
    assert sorted(v for _, _, v in ingestor.readings(device_id)) == [1, 2]
    text = ingestor.metrics()
    assert 'visiontrack_ingestor_mqtt_messages_total{qos="1",result="invalid"}' in text
    assert 'visiontrack_ingestor_mqtt_messages_total{qos="1",result="topic"}' in text
    v5.close()
    v311.close()


def test_a_payload_over_the_body_limit_is_refused(ingestor):
    v5 = Device(ingestor.mqtt_port, ingestor.device(9_100_050), V5).connect()
    big = json.dumps({"a": 1, "pad": [0] * 1}).encode() + b" " * (1_048_576 + 10)
    assert v5.ack(v5.publish(big)) == 0x99
    v5.close()


@pytest.fixture
def small_high_water(redis_server, base_env, run_dir):
    if not INGESTOR_BINARY.exists():
        pytest.skip("ingestor binary not built")
    server = Ingestor(redis_server, base_env, run_dir, VT_STREAM_HIGH_WATER="5", VT_BACKLOG_CHECK_MS="50").start()
    yield server
    server.stop()
    server.redis.flushdb()


def test_backpressure_acknowledges_nothing_that_is_not_stored(small_high_water):
    server = small_high_water
    device_id = 9_100_060
    token = server.device(device_id)
    for n in range(10):
        server.redis.xadd(server.stream, {"v": "1", "d": "1", "r": "[]", "at": str(n)})
    time.sleep(0.3)  # the next backlog sample sees them
    v5 = Device(server.mqtt_port, token, V5).connect()
    assert v5.ack(v5.publish({"a": 1})) == 0x97  # quota exceeded
    v311 = Device(server.mqtt_port, token, V311, clean=False, client_id=f"bp-{uuid.uuid4().hex[:6]}").connect()
    mid = v311.publish({"a": 2})
    assert v311.disconnected.wait(5), "3.1.1: the connection is closed instead of a PUBACK"
    assert mid not in v311.acks
    assert server.readings(device_id) == []
    assert "visiontrack_ingestor_mqtt_messages_total{qos=\"1\",result=\"backpressure\"}" in server.metrics()
    # The backlog drains; the 3.1.1 client reconnects and resends what was never acknowledged.
    server.redis.delete(server.stream)
    v311.client.reconnect()
    assert v311.ack(mid, timeout=15) == 0
    assert [v for _, _, v in server.readings(device_id)] == [2]
    v5.close()
    v311.close()


def test_redis_down_gets_no_puback(redis_server, base_env, run_dir):
    if not INGESTOR_BINARY.exists():
        pytest.skip("ingestor binary not built")
    server = Ingestor(redis_server, base_env, run_dir, VT_REDIS_TIMEOUT_MS="300")
    token = f"vtd_{uuid.uuid4().hex}"
    server.redis.hset(server.index, _field(token), "9100070:active")
    server.env["VT_TOKEN_CACHE_SECONDS"] = "5"
    server.start()
    v5 = Device(server.mqtt_port, token, V5).connect()
    assert v5.ack(v5.publish({"a": 1})) == 0
    # The stream key turned into a string: every XADD fails, as with Redis gone.
    server.redis.delete(server.stream)
    server.redis.set(server.stream, "not a stream")
    mid = v5.publish({"a": 2})
    assert v5.disconnected.wait(5)
    assert v5.disconnect_reason == 0x89  # server busy
    assert mid not in v5.acks
    v5.client.loop_stop()
    server.stop()
    server.redis.flushdb()


def test_sigkill_with_qos_1_in_flight_stores_every_acknowledged_reading_once(
        redis_server, base_env, run_dir, aggregator_factory, db):
    """Messages carry their own ts, so a resend of one already written is the same reading (the natural key
    drops it in Postgres). Every message acknowledged, before or after the kill, is stored exactly once."""
    if not INGESTOR_BINARY.exists():
        pytest.skip("ingestor binary not built")
    server = Ingestor(redis_server, base_env, run_dir).start()
    agg = dev = None
    try:
        device_id = 9_100_080 + uuid.uuid4().int % 1000
        token = server.device(device_id)
        agg = aggregator_factory(REDIS_URL=server.url, VT_STREAM_KEY=server.stream,
                                 VT_DEAD_LETTER_KEY=f"{server.stream}:dead").start()
        dev = Device(server.mqtt_port, token, V311, clean=False, client_id=f"kill-{uuid.uuid4().hex[:6]}").connect()
        dev.client.reconnect_delay_set(0.2, 1)
        now = int(time.time() * 1000)
        total = 3000
        for n in range(total):
            dev.publish({"ts": now - 600_000 + n, "values": {"seq": n}})
            if n == total // 2:
                poll(lambda: dev.acks, what="a first PUBACK")  # the kill lands with some acknowledged, more in flight
                os.kill(server.proc.pid, signal.SIGKILL)
                server.proc.proc.wait(5)
                acked_before = len(dev.acks)
                server.start()
        assert 0 < acked_before < total, "the kill must land with messages in flight"
        poll(lambda: len(dev.acks) == total, timeout=60, interval=0.2, what="every message acknowledged after resend")
        with db.cursor() as cur:
            def stored():
                cur.execute("SELECT count(*), count(DISTINCT ts) FROM telemetry WHERE device_id = %s", (device_id,))
                return cur.fetchone()
            got = poll(lambda: (s := stored())[0] >= total and s, timeout=90, interval=0.5,
                       what=f"all stored (now {stored()}, stream {server.redis.xlen(server.stream)} entries)")
            assert got == (total, total)
            cur.execute("SELECT sum(value) FROM telemetry WHERE device_id = %s", (device_id,))
            assert cur.fetchone()[0] == sum(range(total))
    finally:
        if dev:
            dev.close()
        if agg:
            agg.stop()
        server.stop()
        server.redis.flushdb()


def test_thingsboard_http_device_api(ingestor):
    import requests

    device_id = 9_100_090
    token = ingestor.device(device_id)
    base = f"http://127.0.0.1:{ingestor.http_port}/api/v1"
    ok = requests.post(f"{base}/{token}/telemetry", data=json.dumps({"temperature": 20.5}), timeout=5)
    assert (ok.status_code, ok.content) == (200, b"")
    assert requests.post(f"{base}/vtd_nobody/telemetry", json={"a": 1}, timeout=5).status_code == 401
    assert requests.post(f"{base}/{token}/telemetry", data="{", timeout=5).status_code == 400
    assert [v for _, _, v in ingestor.readings(device_id)] == [20.5]
