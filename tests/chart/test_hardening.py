"""The rendered chart holds every object issue 5 names, with the hardening it names: non-root,
read-only root filesystem, no capabilities, resources, probes, checksums; beat exactly once."""
from __future__ import annotations

import pytest

from .helpers import (MODES, PART_OF, by_kind, component, find, pod_labels, pod_spec, values_args,
                      workloads)

FULL = "vt-visiontrack"


def names(objs, kind):
    return {o["metadata"]["name"] for o in by_kind(objs, kind)}


def test_the_default_release_should_hold_every_object_of_the_system(render):
    objs = render("default")
    assert names(objs, "Deployment") == {f"{FULL}-{c}" for c in ("ingestor", "registry", "query", "worker", "beat")}
    assert names(objs, "StatefulSet") == {f"{FULL}-postgres", f"{FULL}-redis"}
    assert names(objs, "Job") == {f"{FULL}-migrate"}
    assert names(objs, "Service") >= {f"{FULL}-{c}" for c in ("ingestor", "registry", "query", "postgres", "redis")}
    assert names(objs, "HorizontalPodAutoscaler") == {f"{FULL}-{c}" for c in ("ingestor", "registry", "query", "worker")}
    assert names(objs, "PodDisruptionBudget") >= {f"{FULL}-{c}" for c in ("ingestor", "registry", "query", "worker")}
    assert {component(o) for o in by_kind(objs, "NetworkPolicy")} == set(PART_OF) | {"postgres", "redis"}
    assert names(objs, "ConfigMap") >= {f"{FULL}-config"}
    # The release Secret, and Grafana's Postgres data source (it holds the database password).
    assert names(objs, "Secret") == {f"{FULL}-secrets", f"{FULL}-grafana-datasources"}
    assert len(by_kind(objs, "Ingress")) == 1
    tests = [o for o in by_kind(objs, "Pod") if o["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    assert len(tests) == 1


def test_external_databases_should_remove_the_in_chart_ones(render):
    objs = render("external")
    assert not by_kind(objs, "StatefulSet")
    assert not {component(o) for o in objs} & {"postgres", "redis"}


def test_an_existing_secret_should_replace_the_chart_secret(render):
    objs = render("existing-secret")
    assert names(objs, "Secret") == {f"{FULL}-grafana-datasources"}  # no release Secret; Grafana's stays
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for w in workloads(objs) for c in pod_spec(w)["containers"]
            for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
    assert refs == {"visiontrack-credentials"}


def test_high_availability_should_add_the_httproute_and_tls(render):
    objs = render("ha")
    assert len(by_kind(objs, "HTTPRoute")) == 1
    assert by_kind(objs, "Ingress")[0]["spec"]["tls"][0]["hosts"] == ["visiontrack.example.com"]
    pdbs = {component(p): p["spec"] for p in by_kind(objs, "PodDisruptionBudget")}
    assert pdbs["query"] == {"minAvailable": 1, "selector": pdbs["query"]["selector"]}


@pytest.mark.parametrize("mode", MODES)
def test_every_pod_should_run_as_non_root_with_a_read_only_root_and_no_capabilities(render, mode):
    for w in workloads(render(mode)):
        spec, where = pod_spec(w), f"{w['kind']}/{w['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec.get("automountServiceAccountToken") is False, where
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, f"{where}/{c['name']}"
            assert sc["allowPrivilegeEscalation"] is False, f"{where}/{c['name']}"
            assert sc["capabilities"]["drop"] == ["ALL"], f"{where}/{c['name']}"
            assert not sc["capabilities"].get("add"), f"{where}/{c['name']}"


@pytest.mark.parametrize("mode", MODES)
def test_every_container_should_have_requests_and_a_memory_limit(render, mode):
    for w in workloads(render(mode)):
        for c in pod_spec(w)["containers"]:
            res = c.get("resources", {})
            assert res.get("requests", {}).get("cpu") and res["requests"].get("memory"), f"{w['metadata']['name']}/{c['name']}"
            assert res.get("limits", {}).get("memory"), f"{w['metadata']['name']}/{c['name']}"


@pytest.mark.parametrize("mode", MODES)
def test_every_long_running_container_should_have_startup_readiness_and_liveness_probes(render, mode):
    for w in render(mode):
        if w["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for c in pod_spec(w)["containers"]:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in c, f"{w['metadata']['name']}/{c['name']} has no {probe}"
                port = c[probe].get("httpGet", {}).get("port")
                if port is not None:
                    assert port in {p["name"] for p in c["ports"]}, f"{probe} of {c['name']} uses unknown port {port}"


@pytest.mark.parametrize("mode", MODES)
def test_python_containers_should_get_writable_tmp_and_metrics_dirs(render, mode):
    """A read-only root needs emptyDirs where the processes write: /tmp (gunicorn, beat's schedule) and
    PROMETHEUS_MULTIPROC_DIR where it is set."""
    for w in workloads(render(mode)):
        if component(w) not in ("registry", "query", "worker", "beat"):
            continue
        spec = pod_spec(w)
        empty = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for c in spec["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            env = {e["name"]: e.get("value") for e in c["env"]}
            assert mounts.get("/tmp") in empty
            if "PROMETHEUS_MULTIPROC_DIR" in env:
                assert mounts.get(env["PROMETHEUS_MULTIPROC_DIR"]) in empty
            if component(w) == "beat":
                assert env["VT_BEAT_SCHEDULE_FILE"].startswith("/tmp/")


@pytest.mark.parametrize("mode", MODES)
def test_visiontrack_pods_should_roll_when_config_or_secrets_change(render, mode):
    for w in by_kind(render(mode), "Deployment"):
        annotations = w["spec"]["template"]["metadata"].get("annotations", {})
        assert len(annotations.get("checksum/config", "")) == 64, w["metadata"]["name"]
        assert len(annotations.get("checksum/secret", "")) == 64, w["metadata"]["name"]


def test_changing_a_setting_should_change_the_config_checksum(helm):
    from .helpers import CHART, load_yaml_all, run

    def checksum(*args):
        out = run([helm, "template", "vt", str(CHART), "--show-only", "templates/query.yaml", *args]).stdout
        return load_yaml_all(out)[0]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum() == checksum()
    assert checksum() != checksum("--set", "config.VT_LOG_LEVEL=debug")


@pytest.mark.parametrize("mode", MODES)
def test_beat_should_run_exactly_once_and_be_replaced_not_rolled(render, mode):
    beat = find(render(mode), "Deployment", "vt-visiontrack-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    assert not [h for h in by_kind(render(mode), "HorizontalPodAutoscaler")
                if h["spec"]["scaleTargetRef"]["name"] == "vt-visiontrack-beat"]


@pytest.mark.parametrize("mode", MODES)
def test_the_migration_should_be_a_hook_job_that_runs_before_upgrades(render, mode):
    job = find(render(mode), "Job", "vt-visiontrack-migrate")
    hooks = set(job["metadata"]["annotations"]["helm.sh/hook"].split(","))
    assert "pre-upgrade" in hooks
    in_chart_postgres = any(component(o) == "postgres" for o in by_kind(render(mode), "StatefulSet"))
    # An in-chart database cannot exist before install; an external one can.
    assert hooks & {"pre-install", "post-install"} == ({"post-install"} if in_chart_postgres else {"pre-install"})
    assert pod_spec(job)["restartPolicy"] == "Never"


@pytest.mark.parametrize("mode", MODES)
def test_every_object_should_carry_the_standard_labels(render, mode):
    for o in render(mode):
        labels = o["metadata"].get("labels", {})
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by",
                    "app.kubernetes.io/part-of", "helm.sh/chart"):
            assert key in labels, f"{o['kind']}/{o['metadata']['name']} lacks {key}"
        if o["kind"] in ("Deployment", "StatefulSet", "Job"):
            assert pod_labels(o)["app.kubernetes.io/component"] == labels["app.kubernetes.io/component"]


@pytest.mark.parametrize("mode", MODES)
def test_object_names_should_fit_in_a_dns_label(render, mode):
    for o in render(mode):
        assert len(o["metadata"]["name"]) <= 63


def test_a_long_release_name_should_still_give_valid_names(helm):
    from .helpers import CHART, load_yaml_all, run

    release = "a-release-name-that-is-quite-long-for-a-release-of-anything-really"[:53]
    objs = load_yaml_all(run([helm, "template", release, str(CHART)]).stdout)
    assert all(len(o["metadata"]["name"]) <= 63 for o in objs)
    assert len({(o["kind"], o["metadata"]["name"]) for o in objs}) == len(objs), "names collide once cut"


def test_ci_values_files_should_each_change_something(render):
    base = render.text("default")
    for mode in MODES[1:]:
        assert values_args(mode) and render.text(mode) != base
