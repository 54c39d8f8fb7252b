"""A fleet of pretend devices for `make up`: registers them once, then sends telemetry every second.

Settings: VT_URL (the ingress), VT_ADMIN_TOKEN, SIM_DEVICES (20), SIM_INTERVAL (1.0 s), SIM_STATE (where
the devices' ids and tokens are kept, so a restart reuses them). Devices send through /api/ingest (the
Rust ingestor); if it is not there, through the query service's POST /api/telemetry/.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import sys
import time
import urllib.error
import urllib.request
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


def register(api: Api, admin: str, count: int, state_path: Path) -> dict[str, dict]:
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
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
        state_path.write_text(json.dumps(state, indent=1))
    return {name: state[name] for name in sorted(state)[:count]}


def reading(i: int, t: float) -> dict:
    """A daily-ish temperature wave per device, with noise; humidity moving the other way."""
    phase = t / 300 + i
    return {"ts": int(t * 1000),
            "values": {"temperature": round(21 + 4 * math.sin(phase) + random.gauss(0, 0.2), 3),
                       "humidity": round(45 - 10 * math.sin(phase) + random.gauss(0, 0.5), 2),
                       "battery": round(max(0.0, 100 - (t / 3600) % 100), 2)}}


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
    log.info("sending for %d devices every %.1fs", len(devices), interval)
    path = "/api/ingest"
    sent = accepted = failed = 0
    last_report = time.monotonic()
    while not stop["now"]:
        started = time.time()
        for i, (name, dev) in enumerate(devices.items()):
            body = reading(i, started)
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
        if time.monotonic() - last_report >= 10:
            log.info("sent %d messages, %d readings accepted, %d refused", sent, accepted, failed)
            last_report = time.monotonic()
        time.sleep(max(0.0, interval - (time.time() - started)))
    log.info("stopped after %d messages", sent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
