"""`helm upgrade` under a steady ingest load through the ingress controller.

First an upgrade that changes nothing must restart nothing (a pod template that differs between two
renders of the same values would roll every pod, the databases too). Then every part rolls to another
image tag of the same build while devices keep sending: every request is answered 202, or 503 with
Retry-After, and every accepted reading is stored exactly once."""
from __future__ import annotations

import os
import subprocess
import time

from tests.cluster.kube import HELM, NAMESPACE, RELEASE, ingress_url, kubectl_json, release_tokens
from tests.load import LoadGenerator

# Two tags of the same build, both loaded (scripts/test-cluster.sh): the upgrade goes to the one not running.
TAG = os.environ.get("IMAGE_TAG", "dev")
NEXT_TAG = os.environ.get("VT_TEST_NEXT_TAG", f"{TAG}-next")
RATE = float(os.environ.get("VT_TEST_LOAD_RATE", "200"))  # readings/s
PARTS = ("ingestor", "registry", "query", "worker", "beat")


def _upgrade(*settings: str) -> None:
    args = [HELM, "upgrade", RELEASE, "charts/visiontrack", "-n", NAMESPACE, "--reset-then-reuse-values", "--wait",
            "--timeout", "8m"]
    for setting in settings:
        args += ["--set", setting]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr


def _pods() -> dict[str, str]:
    """The running pods of the parts and databases (not the per-revision migration Job's), not being
    deleted, by name, with the image of their first container."""
    items = kubectl_json("-n", NAMESPACE, "get", "pods", "--field-selector=status.phase=Running")["items"]
    return {p["metadata"]["name"]: p["spec"]["containers"][0]["image"] for p in items
            if not p["metadata"].get("deletionTimestamp")
            and all(owner["kind"] != "Job" for owner in p["metadata"].get("ownerReferences", []))}


def _settled() -> None:
    """Wait until no pod of the release is being deleted (an earlier rollout has ended)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        items = kubectl_json("-n", NAMESPACE, "get", "pods")["items"]
        if not any(p["metadata"].get("deletionTimestamp") for p in items):
            return
        time.sleep(1)
    raise AssertionError("pods of an earlier rollout are still being deleted after 120 s")


def _images_of_parts() -> dict[str, set[str]]:
    images: dict[str, set[str]] = {}
    for deployment in kubectl_json("-n", NAMESPACE, "get", "deployments")["items"]:
        part = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        images[part] = {c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]}
    return images


def test_an_upgrade_with_the_same_values_restarts_nothing():
    _settled()
    before = _pods()
    _upgrade()
    time.sleep(5)  # a rollout the upgrade started would have replaced pods by now
    assert _pods() == before


def test_every_part_rolls_to_another_tag_while_readings_keep_arriving_exactly_once():
    running = _images_of_parts()["ingestor"].pop().rsplit(":", 1)[1]
    target = TAG if running == NEXT_TAG else NEXT_TAG
    _settled()
    before = set(_pods())
    admin, reader = release_tokens()
    load = LoadGenerator(ingress_url(), admin, devices=4, rate=RATE, batch=2).start()
    try:
        time.sleep(10)  # a steady state before the upgrade
        _upgrade(f"imageDefaults.tag={target}")
        time.sleep(10)  # and after it
    finally:
        load.stop()
    summary = load.verify(reader, timeout=180)
    print(summary.line())
    images = _images_of_parts()
    assert all(image.endswith(f":{target}") for part in PARTS for image in images[part]), images
    replaced = {name.rsplit("-", 2)[0] for name in before - set(_pods())}
    assert {f"{RELEASE}-{part}" for part in PARTS} <= replaced, f"pods replaced: {sorted(replaced)}"
    assert summary.ok, summary.report()
    assert summary.accepted > RATE * 15  # the load ran through the upgrade, not just around it
