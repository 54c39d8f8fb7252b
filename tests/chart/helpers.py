"""Helpers of the chart layer: the tools (from scripts/install-chart-tools.sh), the chart rendered once
per mode, and what the code says about itself (settings, url maps, routes), for the cross-checks.

Nothing here needs a cluster or a Docker engine. A missing tool skips the checks that need it, with
the reason and the command that installs it. The fixtures are re-exported by conftest.py.
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "visiontrack"
TOOLS = Path(os.environ.get("TOOLS_DIR", ROOT / ".tools"))
# Offline schemas (the Prometheus Operator's CRDs, skaffold's config schema), vendored with their sources and
# licences: see schemas/README.md.
SCHEMAS = Path(__file__).resolve().parent / "schemas"
INSTALL = "scripts/install-chart-tools.sh"

RELEASE = "vt"
NAMESPACE = "visiontrack"
# Rendered as if kube-prometheus-stack (ServiceMonitor, PrometheusRule) and the Gateway API were there.
API_VERSIONS = ["monitoring.coreos.com/v1", "gateway.networking.k8s.io/v1"]
KUBERNETES_VERSION = "1.35.0"

MODES = ["default"] + sorted(p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml"))

# The VisionTrack parts, by chart component: worker and beat are the aggregator.
PART_OF = {"ingestor": "ingestor", "registry": "registry", "query": "query", "worker": "aggregator",
           "beat": "aggregator", "migrate": "migrate"}
PYTHONPATH = os.pathsep.join(str(ROOT / "services" / d) for d in ("common", "registry", "query", "aggregator"))


def tool(name: str) -> str:
    """The path of a tool from .tools/ or PATH; skip the test when it is absent."""
    for candidate in (TOOLS / "bin" / name, TOOLS / "venv" / "bin" / name):
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    pytest.skip(f"{name} not installed (run {INSTALL})")


def run(argv: list[str], *, check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv[:6])}... exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def load_yaml_all(text: str) -> list:
    """YAML documents as Python objects (PyYAML here, or the chart tools' own Python)."""
    try:
        import yaml
    except ImportError:
        python = TOOLS / "venv" / "bin" / "python"
        if not python.exists():
            pytest.skip(f"PyYAML not available (run {INSTALL})")
        out = run([str(python), "-c", "import json, sys, yaml; json.dump(list(yaml.safe_load_all(sys.stdin)), sys.stdout)"],
                  input=text)
        return [d for d in json.loads(out.stdout) if d is not None]
    return [d for d in yaml.safe_load_all(text) if d is not None]


def load_yaml(path: Path):
    docs = load_yaml_all(path.read_text())
    return docs[0] if docs else None


def values_args(mode: str) -> list[str]:
    return [] if mode == "default" else ["--values", str(CHART / "ci" / f"{mode}-values.yaml")]


@functools.lru_cache(maxsize=None)
def _render(helm: str, mode: str) -> tuple[str, tuple]:
    argv = [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *values_args(mode)]
    for api in API_VERSIONS:
        argv += ["--api-versions", api]
    text = run(argv).stdout
    return text, tuple(load_yaml_all(text))


@pytest.fixture(scope="session")
def helm() -> str:
    return tool("helm")


@pytest.fixture(scope="session")
def render(helm):
    """render(mode) -> the rendered objects; render.text(mode) -> the manifest text."""
    def objects(mode: str = "default") -> list[dict]:
        return [o for o in _render(helm, mode)[1] if isinstance(o, dict)]
    objects.text = lambda mode="default": _render(helm, mode)[0]
    return objects


@pytest.fixture(scope="session")
def values():
    return load_yaml(CHART / "values.yaml")


# --- what the objects hold ----------------------------------------------------------------------

POD_KINDS = {"Deployment", "StatefulSet", "Job", "Pod"}


def pod_spec(obj: dict) -> dict:
    return obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]


def pod_labels(obj: dict) -> dict:
    return obj["metadata"].get("labels", {}) if obj["kind"] == "Pod" else obj["spec"]["template"]["metadata"].get("labels", {})


def workloads(objs: list[dict]) -> list[dict]:
    return [o for o in objs if o["kind"] in POD_KINDS]


def component(obj: dict) -> str:
    return obj["metadata"].get("labels", {}).get("app.kubernetes.io/component", "")


def by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def find(objs: list[dict], kind: str, name: str) -> dict | None:
    return next((o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name), None)


def matches(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels and matchExpressions, or a plain map) against labels."""
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, vals = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in vals:
            return False
        if op == "NotIn" and labels.get(key) in vals:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def container_env(objs: list[dict], container: dict) -> dict[str, dict]:
    """Every variable a container gets: name -> {"source": "env"|"configmap"|"secret", "value": ...}."""
    env: dict[str, dict] = {}
    for ref in container.get("envFrom", []):
        if "configMapRef" in ref:
            cm = find(objs, "ConfigMap", ref["configMapRef"]["name"])
            assert cm is not None, f"envFrom ConfigMap {ref['configMapRef']['name']} is not rendered"
            for k, v in (cm.get("data") or {}).items():
                env[k] = {"source": "configmap", "value": v}
        if "secretRef" in ref:
            raise AssertionError("envFrom a whole Secret hides which secrets a part gets; use secretKeyRef")
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = {"source": "env", "value": e["value"]}
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = {"source": "secret", "secret": ref["name"], "key": ref["key"],
                              "optional": bool(ref.get("optional"))}
        else:
            env[e["name"]] = {"source": "other"}
    return env


def part_containers(objs: list[dict]):
    """(component, part, workload, container) of every VisionTrack process container."""
    for w in workloads(objs):
        comp = component(w)
        if comp in PART_OF:
            for c in pod_spec(w)["containers"]:
                yield comp, PART_OF[comp], w, c


def init_containers(objs: list[dict]):
    """(component, part, workload, container) of every init container of a VisionTrack pod. They run the
    shared package's `visiontrack wait-for-schema`, whose settings are migrate's: the part is migrate."""
    for w in workloads(objs):
        comp = component(w)
        if comp in PART_OF:
            for c in pod_spec(w).get("initContainers", []):
                yield comp, "migrate", w, c


def all_part_containers(objs: list[dict]):
    """part_containers, then init_containers."""
    yield from part_containers(objs)
    yield from init_containers(objs)


# --- what the code says about itself -------------------------------------------------------------

def introspect(*args: str):
    """Run tests/chart/introspect.py in a fresh interpreter; its JSON answer."""
    env = {**os.environ, "PYTHONPATH": PYTHONPATH + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = run([sys.executable, str(Path(__file__).with_name("introspect.py")), *args], env=env, check=False,
               cwd=str(ROOT))
    if proc.returncode != 0:
        raise AssertionError(f"introspect {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def python_settings() -> dict[str, dict]:
    if not (ROOT / "services" / "common" / "visiontrack" / "config.py").exists():
        pytest.skip("services/common/visiontrack/config.py does not exist yet")
    return {s["name"]: s for s in introspect("settings")}


RUST_CONFIG = ROOT / "rust-ingestor" / "src" / "config.rs"


@pytest.fixture(scope="session")
def rust_settings() -> dict[str, str | None]:
    """The variables the ingestor reads (rust-ingestor/src/config.rs, outside its tests) -> default."""
    if not RUST_CONFIG.exists():
        pytest.skip("rust-ingestor/src/config.rs does not exist yet")
    source = RUST_CONFIG.read_text().split("#[cfg(test)]")[0]
    names = set(re.findall(r'"((?:VT_[A-Z0-9_]+)|REDIS_URL|DATABASE_URL)"', source))
    assert names, "found no variable names in rust-ingestor/src/config.rs"
    # env.string("NAME", "default") / env.int("NAME", 250, 1, 60_000): the literal after the name.
    defaults = {n: d.strip().strip('"') for n, d in re.findall(r'"([A-Z][A-Z0-9_]+)",\s*("[^"]*"|[^,)]+)', source)}
    return {n: defaults.get(n) for n in names}


@pytest.fixture(scope="session")
def rust_routes() -> set[str]:
    """Every path the ingestor's axum routers register (rust-ingestor/src)."""
    src = ROOT / "rust-ingestor" / "src"
    if not src.exists():
        pytest.skip("rust-ingestor/src does not exist yet")
    routes = set()
    for path in src.rglob("*.rs"):
        if path.name == "tests.rs":
            continue
        text = path.read_text().split("#[cfg(test)]")[0]
        routes |= set(re.findall(r'\.route\(\s*"([^"]+)"', text))
        # A path named by a constant of the same file: .route(INGEST_PATH, ...)
        consts = dict(re.findall(r'const ([A-Z_]+): &str = "([^"]+)";', text))
        routes |= {consts[name] for name in re.findall(r'\.route\(\s*([A-Z_]+)\s*,', text) if name in consts}
    assert routes, "found no .route(\"...\") in rust-ingestor/src"
    return routes
