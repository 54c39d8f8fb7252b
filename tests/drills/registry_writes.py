"""Registry writes tried while Postgres or Redis is down: each must be refused with 503, Retry-After and the
API's error body, and change nothing, in Postgres or in the token index.

Three devices are registered before the outage: one to disable, one whose token to rotate, one to delete;
each round of writes also registers a new device and (optionally) creates an alert rule."""
from __future__ import annotations

import requests

from tests.drills import drill_stack
from tests.local_stack import LocalStack
from visiontrack.tokens import token_sha256

INDEX_KEY = "vt:device-tokens"


class RegistryWrites:
    def __init__(self, stack: LocalStack, tag: str):
        self.stack, self.tag = stack, tag
        self.admin = {"Authorization": f"Bearer {stack.admin_token}"}
        self.devices = {role: self._register(f"{tag}-{role}") for role in ("disable", "rotate", "delete")}
        self.answers: list[tuple[str, int | str, str | None, dict | str]] = []  # (call, status, Retry-After, body)
        self.rounds = 0

    def _register(self, name: str) -> dict:
        resp = requests.post(f"{self.stack.url}/api/devices/", json={"name": name}, headers=self.admin, timeout=10)
        assert resp.status_code == 201, resp.text
        return resp.json()

    def attempt(self, rules: bool = True) -> None:
        """One round of writes, each answer recorded."""
        self.rounds += 1
        url, ids = f"{self.stack.url}/api", {role: d["id"] for role, d in self.devices.items()}
        calls = {
            "register a device": ("POST", f"{url}/devices/", {"name": f"{self.tag}-new-{self.rounds}"}),
            "disable a device": ("PATCH", f"{url}/devices/{ids['disable']}", {"status": "disabled"}),
            "rotate a token": ("POST", f"{url}/devices/{ids['rotate']}/token", None),
            "delete a device": ("DELETE", f"{url}/devices/{ids['delete']}", None),
        }
        if rules:
            calls["create an alert rule"] = ("POST", f"{url}/alert-rules/", {
                "name": f"{self.tag}-rule-{self.rounds}", "metric": "heat", "op": ">", "threshold": 1})
        for what, (method, target, body) in calls.items():
            try:
                resp = requests.request(method, target, json=body, headers=self.admin, timeout=15)
            except requests.RequestException as exc:
                self.answers.append((what, type(exc).__name__, None, str(exc)))
                continue
            try:
                payload = resp.json()
            except ValueError:
                payload = resp.text[:200]
            self.answers.append((what, resp.status_code, resp.headers.get("Retry-After"), payload))

    def refusals_not_503(self, message: str) -> list[tuple]:
        """The answers that were not 503 with a Retry-After in seconds and the API's `unavailable` body whose
        message contains `message`."""
        return [answer for answer in self.answers
                if not (answer[1] == 503 and (answer[2] or "").isdigit() and isinstance(answer[3], dict)
                        and answer[3].get("error") == "unavailable" and message in answer[3].get("message", ""))]

    def changes(self) -> list[str]:
        """What Postgres or the token index shows changed by the refused writes; [] when nothing."""
        found = []
        with drill_stack.database(self.stack) as conn, conn.cursor() as cur:
            cur.execute("SELECT name FROM devices WHERE name LIKE %s", (f"{self.tag}-new-%",))
            found += [f"device {name} registered" for (name,) in cur.fetchall()]
            cur.execute("SELECT name FROM alert_rules WHERE name LIKE %s", (f"{self.tag}-rule-%",))
            found += [f"alert rule {name} created" for (name,) in cur.fetchall()]
            cur.execute("SELECT d.id, d.status, t.token_sha256 FROM devices d "
                        "LEFT JOIN device_tokens t ON t.device_id = d.id WHERE d.id = ANY(%s)",
                        ([d["id"] for d in self.devices.values()],))
            rows = {device_id: (status, sha) for device_id, status, sha in cur.fetchall()}
            cur.execute("SELECT device_id FROM device_purges WHERE device_id = %s", (self.devices["delete"]["id"],))
            if cur.fetchone():
                found.append("the device to delete has a purge queued")
        index = drill_stack.redis_client(self.stack)
        try:
            for role, device in self.devices.items():
                sha = token_sha256(device["token"])
                if rows.get(device["id"]) != ("active", sha):
                    found.append(f"{role}: Postgres holds {rows.get(device['id'])}, not active with its token")
                entry = index.hget(INDEX_KEY, sha)
                if entry != f"{device['id']}:active":
                    found.append(f"{role}: the token index holds {entry!r} for its token")
        finally:
            index.close()
        return found
