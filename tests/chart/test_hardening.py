"""The rendered chart holds every object issue 5 names, with the hardening it names: non-root,
read-only root filesystem, no capabilities, resources, probes, checksums; beat exactly once."""
from __future__ import annotations

import pytest

from .helpers import (CHART, MODES, PART_OF, by_kind, component, find, pod_labels, pod_spec, values_args,
                      workloads)

FULL = "vt-visiontrack"


def names(objs, kind):
    return {o["metadata"]["name"] for o in by_kind(objs, kind)}


def test_the_default_release_should_hold_every_object_of_the_system(render):
    objs = render("default")
    assert names(objs, "Deployment") == {f"{FULL}-{c}" for c in ("ingestor", "registry", "query", "worker", "beat")}
    assert names(objs, "StatefulSet") == {f"{FULL}-postgres", f"{FULL}-redis"}
    assert names(objs, "Job") == {f"{FULL}-migrate-1"}  # helm template renders revision 1
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
        for c in pod_spec(w).get("initContainers", []) + pod_spec(w)["containers"]:
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


@pytest.mark.parametrize("mode", MODES)
def test_generated_secrets_should_be_the_same_in_every_template_of_a_render(render, mode):
    """A value generated per template made every pod's checksum/secret differ on install and all of them
    (postgres-0 and redis-0 too) restart at the first upgrade, when the values are read back instead."""
    objs = render(mode)
    checksums = {w["spec"]["template"]["metadata"]["annotations"]["checksum/secret"]
                 for w in workloads(objs) if w["kind"] in ("Deployment", "StatefulSet")}
    assert len(checksums) == 1
    secret = find(objs, "Secret", f"{FULL}-secrets")
    sources = find(objs, "Secret", f"{FULL}-grafana-datasources")
    if secret and sources and "POSTGRES_PASSWORD" in secret["data"]:
        import base64
        password = base64.b64decode(secret["data"]["POSTGRES_PASSWORD"]).decode()
        assert f"password: {password}" in str(sources["stringData"]).replace("'", "").replace('"', "")


@pytest.mark.parametrize("mode", MODES)
def test_the_apis_should_keep_serving_until_the_ingress_has_taken_them_out(render, mode):
    """Without a preStop pause a rolling update answered 502 for the requests the ingress controller
    still routed to a stopping pod (seen on a real cluster under load)."""
    for w in by_kind(render(mode), "Deployment"):
        if component(w) not in ("ingestor", "registry", "query"):
            continue
        spec = pod_spec(w)
        sleep = spec["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert 0 < sleep < spec.get("terminationGracePeriodSeconds", 30) - 10, w["metadata"]["name"]


def test_changing_a_setting_should_change_the_config_checksum(helm):
    from .helpers import load_yaml_all, run

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
def test_the_migration_should_be_a_release_job_named_per_revision(render, mode):
    """Not a hook: the pods wait for its schema in their init containers and `helm install --wait` waits for
    the pods, so a post-install hook would never start (and a pre-install one finds no in-chart Postgres).
    A Job's template cannot be patched: each revision gets its own Job, named after it."""
    [job] = by_kind(render(mode), "Job")
    assert job["metadata"]["name"] == f"{FULL}-migrate-1"
    assert '"migrate-%d" (int .Release.Revision)' in (CHART / "templates" / "_helpers.tpl").read_text()
    assert "helm.sh/hook" not in (job["metadata"].get("annotations") or {})
    assert pod_spec(job)["restartPolicy"] == "Never"
    # helm --wait watches the Job: it must outlive helm's default --timeout (5m).
    assert job["spec"]["ttlSecondsAfterFinished"] >= 300


@pytest.mark.parametrize("mode", MODES)
def test_only_the_helm_test_pod_should_be_a_hook(render, mode):
    """A migration hook runs before the release's objects exist (no in-chart Postgres, no ConfigMap) or after
    `helm --wait` saw every pod Ready (the APIs served before their tables; with the init containers it
    would never run). External Postgres needs no hook Secret either: the release Secret is there."""
    objs = render(mode)
    hooks = [(o["kind"], o["metadata"]["annotations"]["helm.sh/hook"]) for o in objs
             if "helm.sh/hook" in (o["metadata"].get("annotations") or {})]
    assert hooks == [("Pod", "test")]
    assert not [s for s in by_kind(objs, "Secret") if component(s) == "migrate"]


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
    from .helpers import load_yaml_all, run

    release = "a-release-name-that-is-quite-long-for-a-release-of-anything-really"[:53]
    objs = load_yaml_all(run([helm, "template", release, str(CHART)]).stdout)
    assert all(len(o["metadata"]["name"]) <= 63 for o in objs)
    assert len({(o["kind"], o["metadata"]["name"]) for o in objs}) == len(objs), "names collide once cut"


def test_ci_values_files_should_each_change_something(render):
    base = render.text("default")
    for mode in MODES[1:]:
        assert values_args(mode) and render.text(mode) != base
