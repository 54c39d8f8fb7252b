"""The chart lints, renders in every mode, and every rendered object is valid against the Kubernetes
schemas (kubernetes-validate, bundled offline), the Prometheus Operator's and Traefik's CRD schemas
(vendored in schemas/) and the Gateway API models; values.schema.json refuses what cannot work."""
from __future__ import annotations

import json
import subprocess

import pytest

from .helpers import (CHART, INSTALL, KUBERNETES_VERSION, MODES, NAMESPACE, RELEASE,
                       SCHEMAS, TOOLS, load_yaml, run, tool, values_args)

MIN_KUBERNETES = "1.30.0"  # preStop sleep actions (beta, on by default, from 1.30)

CR_KINDS = {"ServiceMonitor": "crds/monitoring.coreos.com_servicemonitors.yaml",
            "PrometheusRule": "crds/monitoring.coreos.com_prometheusrules.yaml",
            "IngressRouteTCP": "traefik/traefik.io_ingressroutetcps.yaml"}


@pytest.mark.parametrize("mode", MODES)
def test_chart_should_pass_helm_lint_strict(helm, mode):
    proc = run([helm, "lint", "--strict", str(CHART), *values_args(mode)], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("kubernetes", [MIN_KUBERNETES, KUBERNETES_VERSION])
@pytest.mark.parametrize("mode", MODES)
def test_every_rendered_object_should_validate_against_the_kubernetes_schemas(render, mode, kubernetes, tmp_path):
    """Against the oldest Kubernetes the chart allows (Chart.yaml kubeVersion) and a current one."""
    validator = tool("kubernetes-validate")
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(render.text(mode))
    proc = run([validator, "--strict", "--kubernetes-version", kubernetes, "--quiet", str(manifest)],
               check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # kubernetes-validate only warns for kinds it has no schema for: those must be the CRD kinds checked below.
    unknown = {line.split("kind ")[1].split(" ")[0] for line in (proc.stdout + proc.stderr).splitlines()
               if "Couldn't find schema for kind" in line}
    assert unknown <= set(CR_KINDS) | {"HTTPRoute"}, f"objects nothing validated: {unknown}"


def test_the_kubernetes_validator_should_reject_a_broken_object(tmp_path):
    """The validation above can fail: a Deployment with a misspelt field and a string replica count."""
    validator = tool("kubernetes-validate")
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replicas: 'two'\n"
                   "  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n"
                   "    spec:\n      containers: [{name: c, image: i, imagePullPolcy: Always}]\n")
    proc = run([validator, "--strict", "--kubernetes-version", KUBERNETES_VERSION, "--quiet", str(bad)], check=False)
    assert proc.returncode != 0


def _crd_schema(kind: str) -> dict:
    crd = load_yaml(SCHEMAS / CR_KINDS[kind])
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    return _portable_patterns(version["schema"]["openAPIV3Schema"])


def _portable_patterns(node):
    """The CRDs' patterns are Go regexps; the validator reads ECMAScript ones, which have no inline flags.
    "^(?i)(abort|warn)?$" becomes "^([aA][bB][oO][rR][tT]|[wW][aA][rR][nN])?$", which means the same."""
    if isinstance(node, dict):
        out = {k: _portable_patterns(v) for k, v in node.items()}
        if isinstance(out.get("pattern"), str) and "(?i)" in out["pattern"]:
            out["pattern"] = _case_insensitive(out["pattern"].replace("(?i)", ""))
        return out
    if isinstance(node, list):
        return [_portable_patterns(v) for v in node]
    return node


def _case_insensitive(pattern: str) -> str:
    out, in_class, escaped = [], False, False
    for ch in pattern:
        if escaped:
            out.append(ch)
            escaped = False
        elif ch == "\\":
            out.append(ch)
            escaped = True
        elif ch == "[":
            in_class = True
            out.append(ch)
        elif ch == "]":
            in_class = False
            out.append(ch)
        elif ch.isascii() and ch.isalpha() and not in_class:
            out.append(f"[{ch.lower()}{ch.upper()}]")
        else:
            out.append(ch)
    return "".join(out)


def _check_against(schema: dict, objects: list[dict], tmp_path) -> subprocess.CompletedProcess:
    checker = tool("check-jsonschema")
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(schema))
    files = []
    for i, obj in enumerate(objects):
        f = tmp_path / f"object-{i}.json"
        f.write_text(json.dumps(obj))
        files.append(str(f))
    return run([checker, "--schemafile", str(schema_file), *files], check=False)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", sorted(CR_KINDS))
def test_monitoring_custom_resources_should_validate_against_their_crd_schemas(render, mode, kind, tmp_path):
    objects = [o for o in render(mode) if o["kind"] == kind]
    if not objects:
        pytest.skip(f"the chart renders no {kind} in mode {mode}")
    proc = _check_against(_crd_schema(kind), objects, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_crd_schema_check_should_reject_a_broken_servicemonitor(tmp_path):
    broken = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "x"},
              "spec": {"selector": {"matchLabels": {"a": "b"}}, "endpoints": [{"port": "http", "scheme": "gopher"}]}}
    proc = _check_against(_crd_schema("ServiceMonitor"), [broken], tmp_path)
    assert proc.returncode != 0


GATEWAY_VALIDATE = """
import { HTTPRoute } from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute";
import { readFileSync } from "node:fs";
let failed = 0;
for (const obj of JSON.parse(readFileSync(0, "utf8"))) {
  try { new HTTPRoute(obj).validate(); } catch (e) { failed++; console.log(obj.metadata.name + ": " + e.message); }
}
process.exit(failed ? 1 : 0);
"""


def _validate_httproutes(objects: list[dict]) -> subprocess.CompletedProcess:
    node = tool("node")
    models = TOOLS / "node" / "node_modules" / "@kubernetes-models" / "gateway-api"
    if not models.exists():
        pytest.skip(f"Gateway API models not installed (run {INSTALL})")
    script = TOOLS / "node" / "validate-httproute.mjs"
    script.write_text(GATEWAY_VALIDATE)
    return run([node, str(script)], input=json.dumps(objects), check=False)


@pytest.mark.parametrize("mode", MODES)
def test_httproutes_should_validate_against_the_gateway_api_schema(render, mode):
    routes = [o for o in render(mode) if o["kind"] == "HTTPRoute"]
    if not routes:
        pytest.skip(f"no HTTPRoute in mode {mode}")
    proc = _validate_httproutes(routes)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_gateway_api_check_should_reject_a_broken_httproute():
    broken = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "x"},
              "spec": {"rules": [{"matches": [{"path": {"type": "Prefix", "value": "/api"}}]}]}}
    assert _validate_httproutes([broken]).returncode != 0


def test_the_default_values_should_satisfy_their_own_schema():
    """ci/ files are partial overlays; helm lint and template check each merged result against the schema."""
    checker = tool("check-jsonschema")
    proc = run([checker, "--schemafile", str(CHART / "values.schema.json"), str(CHART / "values.yaml")], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--set", "ingestor.replicaCont=2"], "replicaCont"),
    (["--set", "beat.replicaCount=2"], "beat"),
    (["--set", "config.LOG_LEVEL=debug"], "LOG_LEVEL"),
    (["--set", "imageDefaults.pullPolicy=Sometimes"], "pullPolicy"),
    (["--set", "secrets.adminTokens=short"], "adminTokens"),
    (["--set", "postgres.enabled=false"], "externalDatabase.url"),
    (["--set", "redis.enabled=false"], "externalRedis.url"),
    # a Redis Cluster: external only, and Celery's broker on a plain Redis beside it
    (["--set-string", "config.VT_REDIS_CLUSTER=true"], "redis.enabled=false"),
    (["--set", "redis.enabled=false", "--set", "externalRedis.url=redis://cluster:6379",
      "--set-string", "config.VT_REDIS_CLUSTER=true"], "externalRedis.brokerUrl"),
    (["--set", "httpRoute.enabled=true"], "parentRefs"),
    (["--set", "ingress.tls.enabled=true"], "ingress.host"),
    # autoscaling (tests/chart/test_autoscaling.py renders what it accepts)
    (["--set", "worker.autoscaling.requestRate.enabled=true"], "requestRate"),
    (["--set", "query.autoscaling.requestRate.averageValue=lots"], "averageValue"),
    (["--set", "registry.autoscaling.requestRate.metricName="], "metricName"),
    (["--set", "registry.autoscaling.minReplicas=0"], "minReplicas"),
    # the migration: a Job of the release (no hook phases to choose), watched by helm --wait
    (["--set", "migrate.hook=post-install"], "hook"),
    (["--set", "migrate.ttlSecondsAfterFinished=0"], "ttlSecondsAfterFinished"),
    (["--set", "migrate.waitForSchema.timeoutSeconds=0"], "timeoutSeconds"),
])
def test_the_chart_should_refuse_values_that_cannot_work(helm, args, message):
    proc = run([helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args], check=False)
    assert proc.returncode != 0, f"helm template accepted {args}"
    assert message in proc.stderr, proc.stderr


def test_rendering_should_need_no_monitoring_or_gateway_api(helm):
    """Without those APIs in the cluster, the chart must still render (CRD kinds are gated)."""
    proc = run([helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE], check=False)
    assert proc.returncode == 0, proc.stderr
    assert all(kind not in proc.stdout for kind in ("kind: ServiceMonitor", "kind: PrometheusRule", "kind: HTTPRoute"))


@pytest.mark.parametrize("mode", MODES)
def test_a_client_side_install_should_render_hooks_and_notes(helm, mode):
    """helm install --dry-run=client: what an install would apply, hooks and NOTES.txt included."""
    proc = run([helm, "install", "visiontrack", str(CHART), "--namespace", NAMESPACE, "--dry-run=client",
                *values_args(mode)], check=False)
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "helm test visiontrack" in notes and "VT_TOKEN" in notes
    assert "visiontrack-migrate" in proc.stdout.split("NOTES:", 1)[0]


def test_the_oldest_validated_kubernetes_should_be_the_chart_minimum():
    assert load_yaml(CHART / "Chart.yaml")["kubeVersion"] == f">={MIN_KUBERNETES}-0"
