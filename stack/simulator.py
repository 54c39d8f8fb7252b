"""A fleet of pretend devices for `make up`: registers them once, then sends telemetry every second.

Settings: VT_URL (the ingress), VT_ADMIN_TOKEN, SIM_DEVICES (20), SIM_INTERVAL (1.0 s), SIM_STATE (where
the devices' ids and tokens are kept, so a restart reuses them). Devices send through /api/ingest (the
Rust ingestor); if it is not there, through the query service's POST /api/telemetry/. With SIM_MQTT
(host:port of the ingestor's MQTT listener) every odd device from the third on speaks MQTT instead, as a
ThingsBoard device would (token as user name, QoS 1, v1/devices/me/telemetry), MQTT 5 and 3.1.1 in turn.

The alert demo: the first two devices run hot (temperature over 30) for SIM_HOT_SECONDS (40) of every
SIM_HOT_PERIOD (180 s), half a period apart. The simulator makes sure the demo rule exists (temperature > 30
for 10 s on sim-thermo devices, created once, found by name afterwards), receives its webhook on
127.0.0.1:SIM_WEBHOOK_PORT (18090; 0: no webhook) and logs every alert firing and resolving.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

log = logging.getLogger("simulator")


class Api:
    def __init__(self, base: str):
        self.base = base.rstrip("/")

    def call(self, method: str, path: str, token: str, body=None) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else {}
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, {"message": raw.decode(errors="replace")[:200]}
        except OSError as exc:  # no answer (the ingress restarting, say): counted as refused, and on we go
            return 0, {"message": f"no answer: {exc}"}


def _load_state(state_path: Path) -> dict:
    """The devices registered earlier; none if the file is missing or unreadable (the simulator killed while
    writing it by an older version): each is then found by name and given a new token (the 409 below)."""
    try:
        state = json.loads(state_path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError:
        log.warning("%s is unreadable; finding the devices again by name", state_path)
        return {}
    return state if isinstance(state, dict) else {}


def _save_state(state_path: Path, state: dict) -> None:
    """Written whole or not at all (a rename), so a kill mid-write leaves the previous state."""
    scratch = state_path.with_name(state_path.name + ".tmp")
    scratch.write_text(json.dumps(state, indent=1))
    os.replace(scratch, state_path)


def register(api: Api, admin: str, count: int, state_path: Path) -> dict[str, dict]:
    state = _load_state(state_path)
    for i in range(count):
        name = f"sim-{i:04d}"
        if name in state:
            continue
        status, body = api.call("POST", "/api/devices/", admin,
                                {"name": name, "type": "sim-thermo", "location": f"rack-{i % 4}",
                                 "metadata": {"simulated": True}})
        if status == 409:  # registered earlier but its token was lost: issue a new one
            _, page = api.call("GET", f"/api/devices/?q={name}", admin)
            device = next(d for d in page["items"] if d["name"] == name)
            _, tok = api.call("POST", f"/api/devices/{device['id']}/token", admin)
            body, status = {**device, "token": tok["token"]}, 201
        if status != 201:
            raise RuntimeError(f"could not register {name}: {status} {body}")
        state[name] = {"id": body["id"], "token": body["token"]}
        _save_state(state_path, state)
    return {name: state[name] for name in sorted(state)[:count]}


DEMO_RULE = {"name": "demo: sim-thermo over 30 for 10 s", "metric": "temperature", "op": ">", "threshold": 30,
             "for_seconds": 10, "device_type": "sim-thermo", "severity": "warning"}
HOT_PERIOD = float(os.environ.get("SIM_HOT_PERIOD", "180"))
HOT_SECONDS = float(os.environ.get("SIM_HOT_SECONDS", "40"))
# Below Linux's ephemeral ports (32768-60999) like the stack's others (see Ports in stack/local.py).
DEFAULT_WEBHOOK_PORT = 18090


def hot(i: int, t: float) -> bool:
    """Devices 0 and 1 run hot for HOT_SECONDS of every HOT_PERIOD, half a period apart."""
    return i < 2 and (t + i * HOT_PERIOD / 2) % HOT_PERIOD < HOT_SECONDS


def reading(i: int, t: float) -> dict:
    """A daily-ish temperature wave per device (21 +- 4), with noise; humidity moving the other way; the
    first two devices' hot spells at 36."""
    phase = t / 300 + i
    temperature = 36 if hot(i, t) else 21 + 4 * math.sin(phase)
    return {"ts": int(t * 1000),
            "values": {"temperature": round(temperature + random.gauss(0, 0.2), 3),
                       "humidity": round(45 - 10 * math.sin(phase) + random.gauss(0, 0.5), 2),
                       "battery": round(max(0.0, 100 - (t / 3600) % 100), 2)}}


class MqttDevice:
    """One device over MQTT (paho-mqtt): connects in the background, reconnects by itself, counts PUBACKs."""

    def __init__(self, addr: str, token: str, v5: bool):
        import paho.mqtt.client as mqtt

        host, port = addr.rsplit(":", 1)
        self.acked = self.refused = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
        self.client.username_pw_set(token)
        self.client.on_publish = self._on_publish
        self.client.connect_async(host, int(port), keepalive=60)
        self.client.loop_start()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        if reason_code.value == 0:
            self.acked += 1
        else:
            self.refused += 1

    def send(self, body: dict) -> None:
        self.client.publish("v1/devices/me/telemetry", json.dumps(body), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def serve_webhook(port: int) -> str | None:
    """A tiny receiver that logs the alerts the aggregator posts; its URL, or None if the port is taken."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            log.info("webhook: alert %s %s for device %s (%s, value %s)", body.get("id"), body.get("state"),
                     body.get("device_id"), body.get("rule", {}).get("name"), body.get("value"))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    except OSError as exc:
        log.warning("no webhook receiver on :%d (%s); the demo rule posts nowhere", port, exc)
        return None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{port}/webhook"


def ensure_demo_rule(api: Api, admin: str, webhook: str | None) -> int | None:
    """The demo rule's id: found by name, or created (once)."""
    query = urllib.parse.urlencode({"metric": "temperature", "device_type": "sim-thermo", "limit": 1000})
    status, page = api.call("GET", f"/api/alert-rules/?{query}", admin)
    if status != 200:
        log.warning("cannot list alert rules (%s %s); no alert demo", status, page.get("message"))
        return None
    for rule in page["items"]:
        if rule["name"] == DEMO_RULE["name"]:
            if webhook and rule.get("webhook_url") != webhook:  # created when the receiver was elsewhere
                status, changed = api.call("PATCH", f"/api/alert-rules/{rule['id']}", admin, {"webhook_url": webhook})
                if status == 200:
                    log.info("alert rule %d now posts to %s", rule["id"], webhook)
                else:
                    log.warning("cannot point the demo alert rule at %s (%s %s)", webhook, status,
                                changed.get("message"))
            return rule["id"]
    status, rule = api.call("POST", "/api/alert-rules/", admin, {**DEMO_RULE, "webhook_url": webhook})
    if status != 201:
        log.warning("cannot create the demo alert rule (%s %s)", status, rule.get("message"))
        return None
    log.info("created alert rule %d: %s", rule["id"], rule["name"])
    return rule["id"]


def report_alerts(api: Api, admin: str, rule_id: int, known: dict[int, str]) -> None:
    """Log the demo rule's alerts that appeared or changed since the last look."""
    status, page = api.call("GET", f"/api/alerts/?rule_id={rule_id}&limit=20", admin)
    if status != 200:
        return
    for alert in reversed(page["items"]):
        if known.get(alert["id"]) != alert["state"]:
            if alert["id"] in known or alert["state"] == "firing" or known:
                log.info("alert %d %s: device %d, value %s, started %s%s", alert["id"], alert["state"],
                         alert["device_id"], alert["value"], alert["started_at"],
                         f", resolved {alert['resolved_at']}" if alert["resolved_at"] else "")
            known[alert["id"]] = alert["state"]


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s simulator: %(message)s")
    api = Api(os.environ.get("VT_URL", "http://127.0.0.1:8080"))
    admin = os.environ["VT_ADMIN_TOKEN"]
    count = int(os.environ.get("SIM_DEVICES", "20"))
    interval = float(os.environ.get("SIM_INTERVAL", "1.0"))
    state_path = Path(os.environ.get("SIM_STATE", "simulator.json"))
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    devices = register(api, admin, count, state_path)
    webhook_port = int(os.environ.get("SIM_WEBHOOK_PORT", DEFAULT_WEBHOOK_PORT))
    rule_id = ensure_demo_rule(api, admin, serve_webhook(webhook_port) if webhook_port else None)
    alerts: dict[int, str] = {}
    last_alert_check = 0.0
    log.info("sending for %d devices every %.1fs; devices 0 and 1 run hot %.0f s of every %.0f s",
             len(devices), interval, HOT_SECONDS, HOT_PERIOD)
    mqtt_addr = os.environ.get("SIM_MQTT", "")
    over_mqtt = {name: MqttDevice(mqtt_addr, dev["token"], v5=i % 4 == 1)
                 for i, (name, dev) in enumerate(devices.items()) if mqtt_addr and i >= 2 and i % 2 == 1}
    if over_mqtt:
        log.info("%d of the devices send over MQTT to %s", len(over_mqtt), mqtt_addr)
    path = "/api/ingest"
    sent = accepted = failed = 0
    last_report = time.monotonic()
    while not stop["now"]:
        started = time.time()
        for i, (name, dev) in enumerate(devices.items()):
            body = reading(i, started)
            if name in over_mqtt:
                over_mqtt[name].send(body)
                sent += 1
                continue
            if path == "/api/telemetry/":
                body["device_id"] = dev["id"]
            status, answer = api.call("POST", path, dev["token"], body)
            if status in (404, 502) and path == "/api/ingest":
                log.warning("no ingestor behind /api/ingest (%s); using POST /api/telemetry/", status)
                path = "/api/telemetry/"
                status, answer = api.call("POST", path, dev["token"], body)
            sent += 1
            if status == 202:
                accepted += answer.get("accepted", 0)
            else:
                failed += 1
                log.warning("%s: %s %s", name, status, answer.get("message"))
        if rule_id is not None and time.monotonic() - last_alert_check >= 5:
            report_alerts(api, admin, rule_id, alerts)
            last_alert_check = time.monotonic()
        if time.monotonic() - last_report >= 10:
            log.info("sent %d messages, %d readings accepted over HTTP, %d refused; MQTT PUBACKs %d, refused %d",
                     sent, accepted, failed, sum(d.acked for d in over_mqtt.values()),
                     sum(d.refused for d in over_mqtt.values()))
            last_report = time.monotonic()
        time.sleep(max(0.0, interval - (time.time() - started)))
    for dev in over_mqtt.values():
        dev.close()
    log.info("stopped after %d messages", sent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
