"""Cross-checks that fail when the chart and the code drift apart:
- every variable the chart sets is one the code reads, and every setting a part needs is set;
- every Ingress/HTTPRoute path reaches a Service port whose container serves it (Flask url maps, Rust
  routes), and every public route of the code is reachable;
- every container command exists in the code (console scripts, module:callable, the Celery app), and is
  the command the local harness runs; every pod that uses Postgres waits for its schema first;
- selectors, ports and NetworkPolicies fit together.
"""
from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from stack.routes import ROUTES

from .helpers import (CHART, MODES, NAMESPACE, PART_OF, PYTHONPATH, RELEASE, ROOT, all_part_containers, by_kind,
                      component, container_env, find, init_containers, introspect, load_yaml_all, matches,
                      part_containers, pod_labels, pod_spec, run, workloads)

LOOPBACK = re.compile(r"(127\.0\.0\.1|localhost|\[::1\])")


# --- settings -----------------------------------------------------------------------------------

def code_mentions(name: str, part: str) -> bool:
    """A variable that is not a setting (e.g. PROMETHEUS_MULTIPROC_DIR) must appear in the part's code
    or the shared package, the start script included."""
    if part == "ingestor":
        roots = [ROOT / "rust-ingestor" / "src"]
    else:  # migrate is the shared package's own command
        roots = [ROOT / "services" / "common"] + ([ROOT / "services" / part] if part != "migrate" else [])
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and path.suffix in (".py", ".rs", "") and "__pycache__" not in path.parts:
                try:
                    if name in path.read_text(errors="ignore"):
                        return True
                except OSError:
                    continue
    return False


def reads(part: str, name: str, python_settings: dict, rust_settings: dict) -> bool:
    if part == "ingestor":
        return name in rust_settings
    setting = python_settings.get(name)
    return setting is not None and part in setting["parts"]


@pytest.mark.parametrize("mode", MODES)
def test_every_variable_the_chart_gives_a_part_should_be_read_by_that_part(render, mode, python_settings, rust_settings):
    objs = render(mode)
    problems = []
    for comp, part, _w, c in all_part_containers(objs):
        for name, src in container_env(objs, c).items():
            if src["source"] == "configmap":
                continue  # shared by every part: checked below against all of them
            if not (reads(part, name, python_settings, rust_settings) or
                    (name not in python_settings and name not in rust_settings and code_mentions(name, part))):
                problems.append(f"{comp}: {name} is not read by the {part} code")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("mode", MODES)
def test_every_shared_setting_in_the_configmap_should_be_read_by_some_part(render, mode, python_settings, rust_settings):
    cm = find(render(mode), "ConfigMap", "vt-visiontrack-config")
    unknown = sorted(set(cm["data"]) - set(python_settings) - set(rust_settings))
    assert not unknown, f"the ConfigMap sets variables no code reads: {unknown}"


@pytest.mark.parametrize("mode", MODES)
def test_every_shared_setting_should_parse_with_the_code_own_parser(render, mode, python_settings):
    cm = find(render(mode), "ConfigMap", "vt-visiontrack-config")
    pairs = [f"{k}={v}" for k, v in cm["data"].items() if k in python_settings]
    problems = introspect("parse", *pairs)
    assert not problems, f"values the Python parts would refuse at start: {problems}"


@pytest.mark.parametrize("mode", MODES)
def test_the_migration_job_and_the_schema_waits_should_read_the_release_config(render, mode):
    """The Job runs with the release's other objects: it and the init containers read the release ConfigMap
    (no inline copy to drift) and the parts' own DATABASE_URL."""
    objs = render(mode)
    config = find(objs, "ConfigMap", "vt-visiontrack-config")["metadata"]["name"]
    database_url = {container_env(objs, c)["DATABASE_URL"]["secret"] for comp, _p, _w, c in part_containers(objs)
                    if comp in ("registry", "query", "worker", "beat")}
    schema_side = [c for comp, _p, _w, c in part_containers(objs) if comp == "migrate"]
    schema_side += [c for _comp, _p, _w, c in init_containers(objs)]
    assert len(schema_side) == 5, "the Job and four init containers"
    for c in schema_side:
        assert c["envFrom"] == [{"configMapRef": {"name": config}}], c["name"]
        env = container_env(objs, c)
        assert {env["DATABASE_URL"]["secret"]} == database_url and env["DATABASE_URL"]["key"] == "DATABASE_URL"


def needed(part: str, python_settings: dict, rust_settings: dict) -> set[str]:
    """What a part cannot run in a cluster without: required settings, secrets, and anything whose
    default points at this machine (127.0.0.1 / localhost)."""
    if part == "ingestor":
        return {n for n, d in rust_settings.items() if d is None or LOOPBACK.search(d or "")} | {"REDIS_URL"}
    out = set()
    for s in python_settings.values():
        if part in s["parts"] and (s["required"] or s["secret"] or LOOPBACK.search(s["default"] or "")):
            out.add(s["name"])
    return out


@pytest.mark.parametrize("mode", MODES)
def test_every_setting_a_part_needs_should_be_set(render, mode, python_settings, rust_settings):
    objs = render(mode)
    seen = set()
    problems = []
    for comp, part, _w, c in all_part_containers(objs):
        seen.add(part)
        missing = needed(part, python_settings, rust_settings) - set(container_env(objs, c))
        if missing:
            problems.append(f"{comp} ({part}) lacks {sorted(missing)}")
    assert not problems, "\n".join(problems)
    assert seen == set(PART_OF.values())


@pytest.mark.parametrize("mode", MODES)
def test_the_parts_should_not_get_secrets_they_do_not_read(render, mode, python_settings, rust_settings):
    objs = render(mode)
    for comp, part, _w, c in all_part_containers(objs):
        for name, src in container_env(objs, c).items():
            if src["source"] == "secret":
                assert reads(part, name, python_settings, rust_settings), f"{comp} gets secret {name} it never reads"


@pytest.mark.parametrize("mode", ["default", "external", "ha"])
def test_the_chart_secret_should_hold_every_key_the_pods_read_with_valid_values(render, mode, python_settings):
    objs = render(mode)
    secrets = {s["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in (s.get("data") or {}).items()}
               for s in by_kind(objs, "Secret")}
    for w in workloads(objs):
        for c in pod_spec(w).get("initContainers", []) + pod_spec(w)["containers"]:
            for _name, src in container_env(objs, c).items():
                if src["source"] == "secret":
                    assert src["secret"] in secrets, f"{w['metadata']['name']} reads missing Secret {src['secret']}"
                    assert src["optional"] or src["key"] in secrets[src["secret"]], \
                        f"{src['secret']} has no key {src['key']}"
    main = secrets["vt-visiontrack-secrets"]
    pairs = [f"{k}={v}" for k, v in main.items() if k in python_settings]
    assert not introspect("parse", *pairs)


@pytest.mark.parametrize("mode", MODES)
def test_listen_addresses_should_match_the_container_ports(render, mode):
    for comp, _part, _w, c in part_containers(render(mode)):
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        if comp == "ingestor":
            assert env["VT_LISTEN_ADDR"] == f"0.0.0.0:{ports['http']}"
        elif comp in ("registry", "query"):
            assert env["VT_HTTP_BIND"] == f"0.0.0.0:{ports['http']}"
        elif comp in ("worker", "beat"):
            assert env["VT_METRICS_PORT"] == str(ports["metrics"])


# --- routes --------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def served() -> dict[str, list[str]]:
    """Paths each part serves: the Flask url maps (the apps are imported, never started)."""
    out = {}
    for part in ("registry", "query"):
        if not (ROOT / "services" / part / part / "app.py").exists():
            pytest.skip(f"services/{part}/{part}/app.py does not exist yet")
        out[part] = [r["rule"] for r in introspect("urlmap", f"{part}.app:create_app")]
    return out


def serves(rules: list[str], prefix: str) -> bool:
    """True when a route lies under the prefix, matched per path element like Ingress Prefix."""
    prefix = prefix.rstrip("/")
    return any(r == prefix or r.startswith(prefix + "/") for r in rules)


def routes_of(objs: list[dict]) -> list[tuple[str, str, str, object]]:
    """(kind, path, service, port) of every Ingress path and HTTPRoute rule."""
    out = []
    for ing in by_kind(objs, "Ingress"):
        for rule in ing["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                assert p["pathType"] == "Prefix"
                port = p["backend"]["service"]["port"]
                out.append(("Ingress", p["path"], p["backend"]["service"]["name"], port.get("name", port.get("number"))))
    for route in by_kind(objs, "HTTPRoute"):
        for rule in route["spec"]["rules"]:
            for m in rule["matches"]:
                for b in rule["backendRefs"]:
                    assert m["path"]["type"] == "PathPrefix"
                    out.append(("HTTPRoute", m["path"]["value"], b["name"], b["port"]))
    return out


def backend(objs: list[dict], service: str, port) -> tuple[str, dict]:
    """Follow Service -> port -> targetPort -> the one workload whose pods it selects -> container port."""
    svc = find(objs, "Service", service)
    assert svc is not None, f"no Service {service}"
    sp = next((p for p in svc["spec"]["ports"] if port in (p.get("name"), p["port"])), None)
    assert sp is not None, f"Service {service} has no port {port}"
    selected = [w for w in workloads(objs) if w["kind"] != "Job" and matches(svc["spec"]["selector"], pod_labels(w))
                and not w["metadata"].get("annotations", {}).get("helm.sh/hook")]
    assert len(selected) == 1, f"Service {service} selects {[w['metadata']['name'] for w in selected]}"
    w = selected[0]
    for c in pod_spec(w)["containers"]:
        for cp in c.get("ports", []):
            if sp["targetPort"] in (cp.get("name"), cp["containerPort"]):
                return component(w), c
    raise AssertionError(f"Service {service} port {port} targets {sp['targetPort']}, which no container of "
                         f"{w['metadata']['name']} exposes")


@pytest.mark.parametrize("mode", MODES)
def test_every_route_should_reach_a_container_that_serves_its_path(render, mode, served, rust_routes):
    objs = render(mode)
    routes = routes_of(objs)
    if not routes:
        pytest.skip(f"no Ingress or HTTPRoute in mode {mode}")
    served = {**served, "ingestor": sorted(rust_routes)}
    problems = []
    for kind, path, service, port in routes:
        comp, _ = backend(objs, service, port)
        if not serves(served.get(comp, []), path):
            problems.append(f"{kind} {path} -> {service}:{port} ({comp}), which serves none of it")
    assert not problems, "\n".join(problems)


def test_every_public_route_of_the_code_should_be_reachable_through_the_ingress(render, served, rust_routes):
    objs = render("ha")  # Ingress and HTTPRoute both
    routes = routes_of(objs)
    served = {**served, "ingestor": sorted(rust_routes)}
    for kind in ("Ingress", "HTTPRoute"):
        prefixes = {}
        for k, path, service, port in routes:
            if k == kind:
                prefixes.setdefault(backend(objs, service, port)[0], []).append(path)
        for comp, rules in served.items():
            for rule in rules:
                if rule.startswith("/api/"):
                    assert any(serves([rule], p) for p in prefixes.get(comp, [])), \
                        f"{comp} serves {rule}, which no {kind} path routes to it"


def test_the_route_file_should_be_what_the_ingress_and_the_httproute_route(render):
    """files/routes.json, which stack/nginx.py routes by too, is what the chart renders: each path to its part."""
    objs = render("ha")
    for kind in ("Ingress", "HTTPRoute"):
        got = {path: backend(objs, svc, port)[0] for k, path, svc, port in routes_of(objs) if k == kind}
        assert got == ROUTES, kind


def _nginx_size(size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kKmMgG]?)", size).groups()
    return int(number) << {"": 0, "k": 10, "m": 20, "g": 30}[unit.lower()]


def _ingress_body_limit(objs: list[dict]) -> int:
    """ingress-nginx's limit for the Ingress (its default when the annotation is absent)."""
    annotations = by_kind(objs, "Ingress")[0]["metadata"].get("annotations") or {}
    return _nginx_size(annotations.get("nginx.ingress.kubernetes.io/proxy-body-size", "1m"))


@pytest.mark.parametrize("mode", MODES)
def test_the_ingress_body_limit_should_be_the_ingestor_one(render, mode, rust_settings):
    """The ingestor answers 413 from Content-Length and closes without reading the body: a proxy that passes
    a larger body gets a broken pipe and answers 502 instead. So ingress-nginx must refuse it itself."""
    objs = render(mode)
    if not by_kind(objs, "Ingress"):
        pytest.skip(f"no Ingress in mode {mode}")
    (_comp, _part, _w, ingestor), = [x for x in part_containers(objs) if x[0] == "ingestor"]
    limit = container_env(objs, ingestor).get("VT_MAX_BODY_BYTES", {}).get("value") \
        or rust_settings["VT_MAX_BODY_BYTES"].replace("_", "")
    assert _ingress_body_limit(objs) == int(limit)


def test_the_ingress_body_limit_should_follow_the_ingestor_setting(helm):
    text = run([helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--show-only",
                "templates/ingress.yaml", "--set-string", "config.VT_MAX_BODY_BYTES=4096"]).stdout
    assert _ingress_body_limit(load_yaml_all(text)) == 4096


@pytest.mark.parametrize("mode", MODES)
def test_probes_should_hit_paths_the_container_serves(render, mode, served, rust_routes):
    served = {**served, "ingestor": sorted(rust_routes)}
    for comp, _part, _w, c in part_containers(render(mode)):
        if comp not in served:
            continue
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            path = c[probe]["httpGet"]["path"]
            assert path in served[comp], f"{comp} {probe} probes {path}, which it does not serve"


def test_the_aggregator_should_serve_metrics_on_the_port_the_chart_probes(python_settings):
    """worker and beat are probed on VT_METRICS_PORT: the aggregator must read it and start the metrics
    server (with /healthz and /readyz) in both the worker and beat."""
    assert "aggregator" in python_settings["VT_METRICS_PORT"]["parts"]
    source = (ROOT / "services" / "aggregator" / "aggregator" / "celery_app.py").read_text()
    assert "worker_init" in source and "beat_init" in source and "metrics_port" in source


@pytest.fixture(scope="session")
def aggregator_health() -> dict:
    """What the aggregator's metrics server answers, started in a fresh interpreter with Postgres and
    Redis unreachable."""
    return introspect("aggregator-health")


def test_the_aggregator_should_answer_its_probe_paths(aggregator_health):
    paths = aggregator_health["paths"]
    assert paths["/healthz"]["status"] == 200 and paths["/healthz"]["json"] == {"status": "ok"}
    # Its dependencies are down: not ready, in the project's error shape, with Retry-After.
    assert paths["/readyz"]["status"] == 503 and int(paths["/readyz"]["retry_after"]) > 0
    assert paths["/readyz"]["json"]["error"] == "unavailable" and paths["/readyz"]["json"]["details"] == []
    assert paths["/metrics"]["status"] == 200 and paths["/metrics"]["aggregator_metrics"]


@pytest.mark.parametrize("mode", MODES)
def test_the_python_parts_should_be_live_on_healthz_and_ready_on_readyz(render, mode, aggregator_health):
    """Liveness must not follow the dependencies (an outage of Postgres or Redis would restart every
    worker); readiness must, and its timeout must cover the checks (each gives up after
    check_timeout_seconds, one after the other: visiontrack.readiness, as in the APIs)."""
    seen = set()
    for comp, _part, _w, c in part_containers(render(mode)):
        if comp not in ("worker", "beat", "registry", "query"):
            continue
        seen.add(comp)
        aggregator = comp in ("worker", "beat")  # the APIs' paths: test_probes_should_hit_paths_the_container_serves
        for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            assert c[probe]["httpGet"] == {"path": path, "port": "metrics" if aggregator else "http"}, f"{comp} {probe}"
            assert not aggregator or path in aggregator_health["paths"]
        timeout = c["readinessProbe"].get("timeoutSeconds", 1)
        assert timeout >= 2 * aggregator_health["check_timeout_seconds"], f"{comp} readiness times out first"
    assert seen == {"worker", "beat", "registry", "query"}


# --- commands ------------------------------------------------------------------------------------

def pyproject(part: str) -> dict:
    return tomllib.loads((ROOT / "services" / part / "pyproject.toml").read_text())


def requirement_names(part: str) -> set[str]:
    names = set()
    for line in (ROOT / "services" / part / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            names |= requirement_names(Path(line[3:].strip()).parent.name)
        elif line:
            names.add(re.split(r"[\[=<>~! ]", line)[0].lower())
    return names


def module_file(module: str) -> Path | None:
    rel = Path(*module.split("."))
    for base in (ROOT / "services" / d for d in ("common", "registry", "query", "aggregator")):
        for candidate in (base / rel.with_suffix(".py"), base / rel / "__init__.py"):
            if candidate.exists():
                return candidate
    return None


@pytest.mark.parametrize("mode", MODES)
def test_every_container_command_should_exist_in_the_code(render, mode):
    objs = render(mode)
    common = pyproject("common")
    for comp, _part, _w, c in all_part_containers(objs):
        argv = c.get("command", []) + c.get("args", [])
        if comp == "ingestor":
            cargo = tomllib.loads((ROOT / "rust-ingestor" / "Cargo.toml").read_text())
            assert argv[0] in {b["name"] for b in cargo.get("bin", [])}, f"no binary {argv[0]} in Cargo.toml"
            continue
        assert argv[0] == "vt-entrypoint"
        assert "bin/vt-entrypoint" in common["tool"]["setuptools"]["script-files"]
        assert os.access(ROOT / "services" / "common" / "bin" / "vt-entrypoint", os.X_OK)
        program, rest = argv[1], argv[2:]
        if program == "visiontrack":
            target = common["project"]["scripts"]["visiontrack"]
            assert module_file(target.split(":")[0]), target
            parsed = introspect("cli", *rest)  # the command's own parser: subcommand and options exist
            assert "args" in parsed, f"{comp}/{c['name']}: visiontrack {' '.join(rest)}: {parsed.get('error')}"
            assert parsed["args"]["command"] == ("migrate" if comp == "migrate" else "wait-for-schema")
        elif program == "gunicorn":
            assert "gunicorn" in requirement_names(comp)
            config = rest[rest.index("--config") + 1]
            assert config.startswith("python:") and module_file(config.removeprefix("python:")), config
            module, _, factory = rest[-1].partition(":")
            assert module_file(module), module
            assert re.search(rf"^def {factory.removesuffix('()')}\(", module_file(module).read_text(), re.M)
        elif program == "celery":
            assert "celery" in requirement_names("aggregator")
            module = rest[rest.index("--app") + 1]
            assert module_file(module), module
            assert rest[2] == {"worker": "worker", "beat": "beat"}[comp]
        else:
            raise AssertionError(f"{comp} runs {program}, which the cross-checks do not know")


def chart_env_for_local_run(objs: list[dict], c: dict, tmp: Path) -> dict[str, str]:
    env = {}
    for name, src in container_env(objs, c).items():
        if src["source"] in ("env", "configmap"):
            env[name] = src["value"]
    secret = find(objs, "Secret", "vt-visiontrack-secrets")
    for name, src in container_env(objs, c).items():
        if src["source"] == "secret" and (src["key"] in secret["data"] or not src["optional"]):
            env[name] = base64.b64decode(secret["data"][src["key"]]).decode()  # an optional key may be absent
    if "PROMETHEUS_MULTIPROC_DIR" in env:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp / "metrics")
    if "VT_BEAT_SCHEDULE_FILE" in env:
        env["VT_BEAT_SCHEDULE_FILE"] = str(tmp / "beat-schedule")
    return env


def local_bin(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.skip(f"{name} is not installed beside {sys.executable} (install the services' packages)")
    return str(path)


def test_each_python_command_should_load_its_app_with_the_chart_environment(render, tmp_path):
    """The chart's commands, dry: gunicorn --check-config loads the config module and the app, celery
    report loads the Celery app and its tasks, visiontrack migrate and wait-for-schema --help parse; all
    through vt-entrypoint and with the chart's own environment (secrets included)."""
    objs = render("default")
    checked = set()
    for comp, _part, w, c in all_part_containers(objs):
        if comp == "ingestor":
            continue
        argv = (c.get("command", []) + c.get("args", []))
        argv = [local_bin(argv[0])] + [local_bin(argv[1])] + argv[2:]
        if "gunicorn" in argv[1]:
            argv.insert(2, "--check-config")
        elif "celery" in argv[1]:
            argv = argv[:4] + ["report"]
        else:
            argv = argv + ["--help"]
        env = {**os.environ, **chart_env_for_local_run(objs, c, tmp_path),
               "PYTHONPATH": PYTHONPATH, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
        assert proc.returncode == 0, f"{comp}: {' '.join(argv)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        checked.add(comp if c in pod_spec(w)["containers"] else f"{comp}/{c['name']}")
    assert checked == {"registry", "query", "worker", "beat", "migrate"} | \
        {f"{comp}/wait-for-schema" for comp in ("registry", "query", "worker", "beat")}


def test_the_celery_app_should_register_every_task_beat_schedules():
    info = introspect("celery", "aggregator.celery_app")
    assert info["is_celery"]
    assert info["beat_tasks"], "beat schedules nothing"
    assert set(info["beat_tasks"]) <= set(info["tasks"]), "beat schedules tasks no worker registers"


def test_the_chart_should_run_the_commands_the_local_harness_runs(render):
    """stack/services.py starts each part locally exactly as the chart does; the two lists must agree."""
    try:
        sys.path.insert(0, str(ROOT))
        from stack.services import COMMANDS, USES_MULTIPROC_DIR
    except ImportError as exc:
        pytest.skip(f"stack/services.py not importable: {exc}")
    finally:
        sys.path.remove(str(ROOT))
    objs = render("default")
    chart, multiproc = {}, set()
    for comp, _part, _w, c in part_containers(objs):
        argv = c.get("command", []) + c.get("args", [])
        chart[comp] = argv[1:] if argv[0] == "vt-entrypoint" else argv
        if comp == "migrate":  # the Job starts beside the in-chart Postgres; locally Postgres is up first
            chart[comp] = chart[comp][:chart[comp].index("--wait-for-postgres")]
        if "PROMETHEUS_MULTIPROC_DIR" in container_env(objs, c):
            multiproc.add(comp)
    assert chart == COMMANDS
    assert multiproc == set(USES_MULTIPROC_DIR)


# --- the schema: migrated by the Job, waited for by every pod that uses Postgres ----------------------

@pytest.mark.parametrize("mode", MODES)
def test_every_pod_that_uses_postgres_should_wait_for_its_schema_first(render, mode):
    """An init container runs `visiontrack wait-for-schema` from the pod's own image (the migrations it waits
    for are those the part ships) against the part's DATABASE_URL, so no part starts before its tables. The
    ingestor (Redis only) and the Job that migrates have none."""
    objs = render(mode)
    waiting = set()
    for comp, _part, w, c in part_containers(objs):
        inits = pod_spec(w).get("initContainers", [])
        if comp == "migrate" or "DATABASE_URL" not in container_env(objs, c):
            assert not inits, f"{comp} waits for something: {[i['name'] for i in inits]}"
            continue
        [init] = inits
        assert init["image"] == c["image"], f"{comp} waits for another image's migrations"
        assert init["command"] == ["vt-entrypoint"] and init["args"][:2] == ["visiontrack", "wait-for-schema"]
        assert container_env(objs, init)["DATABASE_URL"] == container_env(objs, c)["DATABASE_URL"], comp
        waiting.add(comp)
    assert waiting == {"registry", "query", "worker", "beat"}


def _template(helm: str, *args: str) -> list[dict]:
    return load_yaml_all(run([helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args]).stdout)


def test_the_schema_wait_should_follow_its_values(helm):
    waits = [c for w in _template(helm, "--set", "migrate.waitForSchema.timeoutSeconds=42") if w["kind"] == "Deployment"
             for c in pod_spec(w).get("initContainers", [])]
    assert len(waits) == 4 and all(c["args"][-2:] == ["--timeout", "42"] for c in waits)
    objs = _template(helm, "--set", "migrate.waitForSchema.enabled=false")
    assert not [w for w in workloads(objs) if pod_spec(w).get("initContainers")]


def test_the_migration_job_should_wait_for_postgres_as_long_as_it_may_run(render):
    """It starts with the in-chart Postgres: it waits for it (up to its deadline) instead of failing and
    backing off."""
    [job] = by_kind(render("default"), "Job")
    parsed = introspect("cli", *pod_spec(job)["containers"][0]["args"][1:])["args"]
    assert parsed["wait_for_postgres"] == job["spec"]["activeDeadlineSeconds"]


# --- selectors, ports and network policies ----------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_selectors_and_targets_should_fit_together(render, mode):
    objs = render(mode)
    for w in workloads(objs):
        if w["kind"] in ("Deployment", "StatefulSet"):
            assert matches(w["spec"]["selector"], pod_labels(w)), w["metadata"]["name"]
    for svc in by_kind(objs, "Service"):
        backend(objs, svc["metadata"]["name"], svc["spec"]["ports"][0]["port"])
    for sts in by_kind(objs, "StatefulSet"):
        assert find(objs, "Service", sts["spec"]["serviceName"])
    for hpa in by_kind(objs, "HorizontalPodAutoscaler"):
        target = find(objs, hpa["spec"]["scaleTargetRef"]["kind"], hpa["spec"]["scaleTargetRef"]["name"])
        assert target is not None and "replicas" not in target["spec"], hpa["metadata"]["name"]
    for pdb in by_kind(objs, "PodDisruptionBudget"):
        selected = [w for w in workloads(objs) if matches(pdb["spec"]["selector"], pod_labels(w))]
        assert len(selected) == 1, pdb["metadata"]["name"]


def admits(policy: dict, labels: dict, port_name: str, container: dict) -> bool:
    numbers = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    for rule in policy["spec"].get("ingress") or []:
        ports = [p["port"] for p in rule.get("ports", [])]
        if ports and port_name not in ports and numbers.get(port_name) not in ports:
            continue
        for peer in rule.get("from", []):
            if "podSelector" in peer and "namespaceSelector" not in peer and matches(peer["podSelector"], labels):
                return True
    return False


@pytest.mark.parametrize("mode", ["default", "ha", "monitoring-off"])
def test_network_policies_should_let_exactly_the_parts_that_use_a_database_reach_it(render, mode):
    objs = render(mode)
    uses = {"postgres": "DATABASE_URL", "redis": "REDIS_URL"}
    # A policy admits pods, not containers: a pod must reach a database when any of its containers (its
    # wait-for-schema init container too) reads that database's URL.
    pods = [(component(w), pod_labels(w), pod_spec(w).get("initContainers", []) + pod_spec(w)["containers"])
            for w in workloads(objs) if component(w) in PART_OF]
    for db, variable in uses.items():
        policy = next(p for p in by_kind(objs, "NetworkPolicy") if component(p) == db)
        server = next(w for w in workloads(objs) if component(w) == db)
        server_container = pod_spec(server)["containers"][0]
        for comp, labels, containers in pods:
            wants = any(variable in container_env(objs, c) for c in containers)
            assert admits(policy, labels, db, server_container) == wants, \
                f"{db} policy {'refuses' if wants else 'admits'} {comp}"


@pytest.mark.parametrize("mode", ["default", "external", "ha"])
def test_every_visiontrack_pod_should_be_covered_by_a_network_policy(render, mode):
    objs = render(mode)
    policies = by_kind(objs, "NetworkPolicy")
    for w in workloads(objs):
        if w["metadata"].get("annotations", {}).get("helm.sh/hook") == "test":
            continue
        covering = [p for p in policies if matches(p["spec"]["podSelector"], pod_labels(w))]
        assert len(covering) == 1, f"{w['metadata']['name']} is covered by {len(covering)} policies"
        assert set(covering[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}


def test_the_helm_test_pod_should_be_admitted_to_the_apis(render):
    objs = render("default")
    test = next(p for p in by_kind(objs, "Pod") if p["metadata"]["annotations"].get("helm.sh/hook") == "test")
    for comp in ("ingestor", "registry", "query"):
        policy = next(p for p in by_kind(objs, "NetworkPolicy") if component(p) == comp)
        container = pod_spec(find(objs, "Deployment", f"vt-visiontrack-{comp}"))["containers"][0]
        assert admits(policy, test["metadata"]["labels"], "http", container), comp
    env = {e["name"]: e.get("value") for e in test["spec"]["containers"][0]["env"]}
    for comp in ("ingestor", "registry", "query"):
        host, port = env[f"{comp.upper()}_URL"].removeprefix("http://").split(":")
        backend(objs, host, int(port))


def start_ingestor(env: dict[str, str], seconds: float = 2.0) -> tuple[bool, str]:
    """Start the built ingestor with `env`; (still running after `seconds`, its output). It refuses a bad
    setting at once and otherwise keeps running, Redis or not."""
    binary = ROOT / "rust-ingestor" / "target" / "release" / "visiontrack-ingestor"
    if not binary.exists():
        pytest.skip(f"ingestor binary not built ({binary.relative_to(ROOT)}); run `make ingestor-build`")
    proc = subprocess.Popen([str(binary)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
        return True, out
    return False, proc.communicate()[0]


@pytest.mark.parametrize("mode", ["default", "ha"])
def test_the_ingestor_should_accept_the_chart_environment(render, mode, tmp_path):
    objs = render(mode)
    (comp, part, w, c), = [x for x in part_containers(objs) if x[0] == "ingestor"]
    env = {name: src["value"] for name, src in container_env(objs, c).items() if "value" in src}
    # Local stand-ins for what only exists in the cluster: a free address, a Redis that is not there.
    env.update({"VT_LISTEN_ADDR": "127.0.0.1:0", "REDIS_URL": "redis://127.0.0.1:1/0", "PATH": os.environ["PATH"]})
    running, out = start_ingestor(env)
    assert running, f"the ingestor refused the chart's settings:\n{out[-2000:]}"


def test_the_ingestor_start_check_should_catch_a_bad_setting():
    running, out = start_ingestor({"VT_LISTEN_ADDR": "127.0.0.1:0", "VT_STREAM_SHARDS": "0",
                                   "REDIS_URL": "redis://127.0.0.1:1/0"})
    assert not running and "VT_STREAM_SHARDS" in out
