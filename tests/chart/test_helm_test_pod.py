"""The chart's `helm test` script, run here against the real processes (started by the harness the way
the chart starts them): it must register a device through the registry, ingest through the ingestor and
read the reading back through query, and it must fail when a step fails.

These need Postgres, Redis and the built ingestor, so they are integration tests too (`make chart-test`
leaves them out; `make test` runs them)."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from stack.services import INGESTOR_BINARY
from tests.conftest import ADMIN_TOKEN, Aggregator

from .helpers import by_kind

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def script(render):
    pod = next(p for p in by_kind(render("default"), "Pod") if p["metadata"]["annotations"]["helm.sh/hook"] == "test")
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["/bin/sh", "-c"]
    return container["args"][0]


@pytest.fixture(scope="module")
def aggregator(base_env, run_dir):
    agg = Aggregator(base_env, run_dir).start()
    yield agg
    agg.stop()


def run_script(script: str, ingestor: str, registry: str, query: str, timeout: int = 60):
    if not shutil.which("curl"):
        pytest.skip("curl not installed")
    env = {"PATH": os.environ["PATH"], "INGESTOR_URL": ingestor, "REGISTRY_URL": registry, "QUERY_URL": query,
           "TIMEOUT_SECONDS": str(timeout), "VT_ADMIN_TOKENS": f"{ADMIN_TOKEN},another-admin-token-0123"}
    return subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=timeout + 60)


def test_the_helm_test_should_pass_against_a_working_system(script, registry_url, query_url, ingestor_url, aggregator):
    proc = run_script(script, ingestor_url, registry_url, query_url)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "helm test passed" in proc.stdout


def test_the_helm_test_should_fail_when_the_reading_never_comes_back(script, registry_url, ingestor_url):
    """Read back from a service that never has the reading (the registry stands in for query): the script
    must give up at its deadline, not pass."""
    if not INGESTOR_BINARY.exists():
        pytest.skip("ingestor binary not built")
    proc = run_script(script, ingestor_url, registry_url, registry_url, timeout=3)
    assert proc.returncode != 0
    assert "not readable" in proc.stdout


def test_the_helm_test_should_fail_when_the_registry_refuses_the_token(script, registry_url, query_url, ingestor_url):
    """A wrong admin token: registering the device fails, and so must the script."""
    bad = script.replace('admin="${VT_ADMIN_TOKENS%%,*}"', 'admin="not-the-token-0123456789"')
    assert bad != script
    proc = run_script(bad, ingestor_url, registry_url, query_url, timeout=3)
    assert proc.returncode != 0


def test_a_passed_helm_test_leaves_no_pod_behind(render):
    """helm uninstall deletes no hook, so a test pod the policy keeps would outlive the release."""
    pod, = [p for p in by_kind(render("default"), "Pod") if p["metadata"]["annotations"]["helm.sh/hook"] == "test"]
    policy = pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"].split(",")
    assert "hook-succeeded" in policy and "before-hook-creation" in policy, policy
