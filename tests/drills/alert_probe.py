"""Whether alerts still fire after a fault: a device of its own and a rule on it (its `heat` over 50, at once,
with a webhook to a receiver here). Each check sends a hot reading, waits for a new alert to fire, sends a
cool one, waits for it to resolve, and for both webhooks."""
from __future__ import annotations

import time

import requests

from tests.receiver import Receiver

HOOK = "/drill-alert"


class AlertProbe:
    def __init__(self, url: str, admin_token: str):
        self.url = url
        self.admin = {"Authorization": f"Bearer {admin_token}"}
        self.receiver = Receiver()
        resp = requests.post(f"{url}/api/devices/", json={"name": "drill-alert"}, headers=self.admin, timeout=10)
        assert resp.status_code == 201, resp.text
        self.device = resp.json()
        resp = requests.post(f"{url}/api/alert-rules/", headers=self.admin, timeout=10, json={
            "name": "drill: heat over 50", "metric": "heat", "op": ">", "threshold": 50,
            "device_id": self.device["id"], "webhook_url": self.receiver.url(HOOK)})
        assert resp.status_code == 201, resp.text
        self.rule_id = resp.json()["id"]
        self.seen: set[int] = set()

    def close(self) -> None:
        self.receiver.shutdown()

    def check(self, timeout: float = 90) -> float:
        """Seconds until a new alert fired and resolved, with both webhooks delivered; fails at the timeout."""
        started = time.monotonic()
        deadline = started + timeout
        hot_at = int(time.time() * 1000)
        self._send(hot_at, 99.0, deadline)
        alert = self._wait(lambda: self._new_alert(), deadline, "a new alert firing")
        self._send(hot_at + 1, 1.0, deadline)
        self._wait(lambda: self._state(alert["id"]) == "resolved", deadline, f"alert {alert['id']} resolving")
        for state in ("firing", "resolved"):
            self._wait(lambda s=state: any(c["header"] == f"{alert['id']}:{s}" and c["status"] == 200
                                           for c in self.receiver.on(HOOK)),
                       deadline, f"the {state} webhook of alert {alert['id']}")
        self.seen.add(alert["id"])
        assert alert["value"] == 99.0, alert
        return time.monotonic() - started

    def _send(self, ts: int, heat: float, deadline: float) -> None:
        """Until answered 202: right after a fault the ingress may still answer 503."""
        last = None
        while time.monotonic() < deadline:
            try:
                last = requests.post(f"{self.url}/api/ingest", json={"ts": ts, "values": {"heat": heat}},
                                     headers={"Authorization": f"Bearer {self.device['token']}"}, timeout=5)
                if last.status_code == 202:
                    return
            except requests.RequestException as exc:
                last = exc
            time.sleep(0.2)
        raise AssertionError(f"heat {heat} never accepted: {getattr(last, 'status_code', last)}")

    def _alerts(self) -> list[dict]:
        try:
            resp = requests.get(f"{self.url}/api/alerts/", params={"rule_id": self.rule_id, "limit": 50},
                                headers=self.admin, timeout=5)
        except requests.RequestException:
            return []
        return resp.json()["items"] if resp.status_code == 200 else []

    def _new_alert(self) -> dict | None:
        return next((a for a in self._alerts() if a["id"] not in self.seen), None)

    def _state(self, alert_id: int) -> str | None:
        return next((a["state"] for a in self._alerts() if a["id"] == alert_id), None)

    @staticmethod
    def _wait(check, deadline: float, what: str):
        while time.monotonic() < deadline:
            found = check()
            if found:
                return found
            time.sleep(0.2)
        raise AssertionError(f"alerts: timed out waiting for {what}")
