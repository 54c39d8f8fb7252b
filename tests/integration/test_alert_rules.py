"""`/api/alert-rules/` in the registry: create, validate, list with filters and pages, read, change, delete."""
from __future__ import annotations

import uuid

import pytest
import requests

from tests.integration.api import ADMIN, READER


def _rule(registry_url, **fields) -> requests.Response:
    body = {"name": f"rule-{uuid.uuid4().hex[:8]}", "metric": "temperature", "op": ">", "threshold": 30, **fields}
    return requests.post(f"{registry_url}/api/alert-rules/", json=body, headers=ADMIN)


def test_create_read_change_delete_a_threshold_rule(registry_url):
    device = requests.post(f"{registry_url}/api/devices/", json={"name": f"r-{uuid.uuid4().hex[:8]}"},
                           headers=ADMIN).json()
    resp = _rule(registry_url, device_id=device["id"], for_seconds=30, severity="critical",
                 webhook_url="http://127.0.0.1:9/hook")
    assert resp.status_code == 201, resp.text
    rule = resp.json()
    assert {k: rule[k] for k in ("kind", "metric", "op", "threshold", "for_seconds", "after_seconds", "device_id",
                                 "device_type", "severity", "webhook_url", "enabled")} == {
        "kind": "threshold", "metric": "temperature", "op": ">", "threshold": 30.0, "for_seconds": 30,
        "after_seconds": None, "device_id": device["id"], "device_type": None, "severity": "critical",
        "webhook_url": "http://127.0.0.1:9/hook", "enabled": True}
    url = f"{registry_url}/api/alert-rules/{rule['id']}"
    assert requests.get(url, headers=READER).json() == rule
    changed = requests.patch(url, json={"threshold": 35.5, "enabled": False, "webhook_url": None}, headers=ADMIN)
    assert changed.status_code == 200
    assert (changed.json()["threshold"], changed.json()["enabled"], changed.json()["webhook_url"]) == \
        (35.5, False, None)
    assert requests.delete(url, headers=READER).status_code == 403
    assert requests.delete(url, headers=ADMIN).status_code == 204
    assert requests.get(url, headers=ADMIN).status_code == 404
    assert requests.patch(url, json={"name": "again"}, headers=ADMIN).status_code == 404
    assert requests.delete(url, headers=ADMIN).status_code == 404
    listed = requests.get(f"{registry_url}/api/alert-rules/", params={"device_id": device["id"]}, headers=READER)
    assert listed.json()["items"] == []


def test_an_inactivity_rule_for_a_device_type(registry_url):
    resp = requests.post(f"{registry_url}/api/alert-rules/", headers=ADMIN,
                         json={"name": "silent", "kind": "inactivity", "after_seconds": 300, "device_type": "pump"})
    assert resp.status_code == 201, resp.text
    rule = resp.json()
    assert (rule["kind"], rule["after_seconds"], rule["device_type"], rule["metric"], rule["severity"]) == \
        ("inactivity", 300, "pump", None, "warning")


@pytest.mark.parametrize("fields,field", [
    ({"op": "=>"}, "op"), ({"threshold": None}, "threshold"), ({"metric": "9bad"}, "metric"),
    ({"severity": "fatal"}, "severity"), ({"for_seconds": -1}, "for_seconds"),
    ({"webhook_url": "ftp://x"}, "webhook_url"), ({"webhook_url": "http://localhost:99999/x"}, "webhook_url"),
    ({"webhook_url": "http://localhost:0/x"}, "webhook_url"), ({"device_id": 1, "device_type": "x"}, "device_type"),
    ({"device_id": 987654321}, "device_id"), ({"after_seconds": 5}, "after_seconds"),
    ({"kind": "inactivity"}, "after_seconds"), ({"name": ""}, "name"), ({"kind": "sometimes"}, "kind"),
])
def test_bad_rules_are_refused_naming_the_field(registry_url, fields, field):
    resp = _rule(registry_url, **fields)
    assert resp.status_code == 400, resp.text
    assert field in [d["field"] for d in resp.json()["details"]]


def test_patch_checks_the_rule_as_it_would_be(registry_url):
    rule = _rule(registry_url).json()
    url = f"{registry_url}/api/alert-rules/{rule['id']}"
    resp = requests.patch(url, json={"kind": "inactivity", "after_seconds": 60}, headers=ADMIN)
    assert resp.status_code == 400 and {d["field"] for d in resp.json()["details"]} == {"op", "threshold"}
    resp = requests.patch(url, json={"kind": "inactivity", "after_seconds": 60, "op": None, "threshold": None},
                          headers=ADMIN)
    assert resp.status_code == 200 and resp.json()["kind"] == "inactivity"
    assert requests.patch(f"{registry_url}/api/alert-rules/987654321", json={"name": "x"},
                          headers=ADMIN).status_code == 404


def test_list_filters_and_pages_without_skipping_or_repeating(registry_url):
    metric = f"m_{uuid.uuid4().hex[:8]}"
    made = [_rule(registry_url, metric=metric, severity="info" if i % 2 else "critical").json()["id"]
            for i in range(5)]
    seen, cursor = [], None
    while True:
        params = {"metric": metric, "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = requests.get(f"{registry_url}/api/alert-rules/", params=params, headers=READER).json()
        seen += [r["id"] for r in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == made
    critical = requests.get(f"{registry_url}/api/alert-rules/", params={"metric": metric, "severity": "critical"},
                            headers=READER).json()["items"]
    assert [r["id"] for r in critical] == made[::2]
    assert requests.get(f"{registry_url}/api/alert-rules/").status_code == 401
    assert requests.post(f"{registry_url}/api/alert-rules/", json={}, headers=READER).status_code == 403


def test_deleting_a_device_deletes_the_rules_scoped_to_it(registry_url):
    device = requests.post(f"{registry_url}/api/devices/", json={"name": f"r-{uuid.uuid4().hex[:8]}"},
                           headers=ADMIN).json()
    rule = _rule(registry_url, device_id=device["id"]).json()
    assert requests.delete(f"{registry_url}/api/devices/{device['id']}", headers=ADMIN).status_code == 204
    assert requests.get(f"{registry_url}/api/alert-rules/{rule['id']}", headers=ADMIN).status_code == 404


# A JSON body is taken at its JSON types: an integer is a JSON integer (not 1.5, which was truncated to 1, nor
# 2.0, as the ingest path refuses it for ts and device_id), a number a JSON number, a boolean true or false.
LOOSE = [
    ({"for_seconds": 1.5}, "for_seconds"), ({"for_seconds": 2.0}, "for_seconds"), ({"for_seconds": "30"}, "for_seconds"),
    ({"for_seconds": True}, "for_seconds"), ({"threshold": "1.5"}, "threshold"), ({"threshold": False}, "threshold"),
    ({"device_id": "DEVICE"}, "device_id"), ({"device_id": "DEVICE.0"}, "device_id"), ({"enabled": "yes"}, "enabled"),
    ({"enabled": 1}, "enabled"), ({"enabled": "true"}, "enabled"),
    ({"kind": "inactivity", "op": None, "threshold": None, "after_seconds": 60.5}, "after_seconds"),
    ({"kind": "inactivity", "op": None, "threshold": None, "after_seconds": "60"}, "after_seconds"),
]


@pytest.mark.parametrize("fields,field", LOOSE)
def test_body_values_must_have_their_json_type(registry_url, db, fields, field):
    if "device_id" in fields:  # a device that exists, as a string ("73") or a float (73.0)
        device = requests.post(f"{registry_url}/api/devices/", json={"name": f"r-{uuid.uuid4().hex[:8]}"},
                               headers=ADMIN).json()
        fields = {"device_id": str(device["id"]) if fields["device_id"] == "DEVICE" else float(device["id"])}
    name = f"loose-{uuid.uuid4().hex[:8]}"
    resp = _rule(registry_url, name=name, **fields)
    assert resp.status_code == 400 and resp.json()["error"] == "validation_error", resp.text
    assert field in [d["field"] for d in resp.json()["details"]], resp.text
    with db.cursor() as cur:
        cur.execute("SELECT 1 FROM alert_rules WHERE name = %s", (name,))
        assert cur.fetchone() is None
    rule = _rule(registry_url).json()
    url = f"{registry_url}/api/alert-rules/{rule['id']}"
    resp = requests.patch(url, json=fields, headers=ADMIN)
    assert resp.status_code == 400 and field in [d["field"] for d in resp.json()["details"]], resp.text
    assert requests.get(url, headers=READER).json() == rule


def test_json_numbers_of_either_kind_are_numbers(registry_url):
    resp = _rule(registry_url, threshold=30, for_seconds=0, enabled=False)
    assert resp.status_code == 201, resp.text
    assert (resp.json()["threshold"], resp.json()["for_seconds"], resp.json()["enabled"]) == (30.0, 0, False)
    resp = requests.patch(f"{registry_url}/api/alert-rules/{resp.json()['id']}", json={"threshold": -1.5e3},
                          headers=ADMIN)
    assert resp.status_code == 200 and resp.json()["threshold"] == -1500.0, resp.text
