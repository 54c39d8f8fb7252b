"""MQTT over TLS (`VT_MQTT_TLS_ADDR`) against the real ingestor binary and a real Redis, paho-mqtt as the
device: both versions publish through TLS beside the plain listener, plain MQTT on the TLS port gets no
CONNACK, and a certificate that cannot be used stops the start with a message naming its file."""
from __future__ import annotations

import socket
import ssl
import subprocess
import time

import pytest

from stack.servers import free_port
from stack.services import INGESTOR_BINARY
from tests.conftest import poll
from tests.integration.test_mqtt import V5, V311, Device, Ingestor


@pytest.fixture(scope="module")
def certificate(run_dir):
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    folder = run_dir / "mqtt-tls"
    folder.mkdir(exist_ok=True)
    cert, key = folder / "tls.crt", folder / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "1", "-subj", "/CN=visiontrack-test", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def ingestor(redis_server, base_env, run_dir, certificate):
    if not INGESTOR_BINARY.exists():
        pytest.skip(f"ingestor binary not built ({INGESTOR_BINARY}); run `make ingestor-build`")
    tls_port = free_port()
    cert, key = certificate
    server = Ingestor(redis_server, base_env, run_dir, VT_MQTT_TLS_ADDR=f"127.0.0.1:{tls_port}",
                      VT_MQTT_TLS_CERT=str(cert), VT_MQTT_TLS_KEY=str(key), VT_MQTT_CONNECT_TIMEOUT_MS="2000")
    server.tls_port = tls_port
    server.start()
    yield server
    server.stop()
    server.redis.flushdb()


def _tls_device(ingestor, certificate, token: str, protocol) -> Device:
    dev = Device(ingestor.tls_port, token, protocol)
    dev.client.tls_set(ca_certs=str(certificate[0]))
    return dev


@pytest.mark.parametrize("protocol", [V311, V5], ids=["3.1.1", "5"])
def test_readings_published_over_tls_are_acknowledged_and_stored(ingestor, certificate, protocol):
    device_id = 9_300_000 + protocol
    dev = _tls_device(ingestor, certificate, ingestor.device(device_id), protocol).connect()
    plain = Device(ingestor.mqtt_port, ingestor.device(device_id + 100), protocol).connect()
    now = int(time.time() * 1000)
    try:
        assert dev.ack(dev.publish({"ts": now, "values": {"temperature": 21.5}})) == 0
        assert plain.ack(plain.publish({"ts": now, "values": {"temperature": 3.5}})) == 0, "the plain port still serves"
    finally:
        dev.close()
        plain.close()
    assert ingestor.readings(device_id) == [["temperature", now, 21.5]]
    assert ingestor.readings(device_id + 100) == [["temperature", now, 3.5]]


def test_a_device_that_does_not_trust_the_certificate_gets_nowhere(ingestor):
    context = ssl.create_default_context()  # the system's authorities: they never signed the test's certificate
    with socket.create_connection(("127.0.0.1", ingestor.tls_port), timeout=5) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            context.wrap_socket(raw, server_hostname="127.0.0.1")


def test_plain_mqtt_on_the_tls_port_gets_no_connack_and_is_counted(ingestor):
    connect = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x1e\x00\x00"
    with socket.create_connection(("127.0.0.1", ingestor.tls_port), timeout=5) as s:
        s.sendall(connect)
        answer = s.recv(64)
    assert not answer.startswith(b"\x20"), f"a CONNACK over plain TCP on the TLS port: {answer!r}"
    poll(lambda: 'visiontrack_ingestor_mqtt_connects_total{result="tls_failed"}' in ingestor.metrics(),
         what="the failed handshake counted")


def test_a_certificate_that_cannot_be_used_stops_the_start_naming_its_file(base_env, run_dir, certificate):
    broken = run_dir / "mqtt-tls" / "broken.crt"
    broken.write_text("not a certificate\n")
    env = {**base_env, "VT_LISTEN_ADDR": f"127.0.0.1:{free_port()}", "VT_MQTT_TLS_ADDR": f"127.0.0.1:{free_port()}",
           "VT_MQTT_TLS_CERT": str(broken), "VT_MQTT_TLS_KEY": str(certificate[1])}
    done = subprocess.run([str(INGESTOR_BINARY)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done
    assert "broken.crt" in done.stdout + done.stderr
