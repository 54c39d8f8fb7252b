"""The cluster side fits the chart: skaffold.yaml (schema, artifacts, value templates), the kind config
and the ingress controller's values, the monitoring stack's values, and the make targets."""
from __future__ import annotations

import json
import re

import pytest

from .helpers import CHART, ROOT, SCHEMAS, load_yaml, run, tool
from .test_images import PYTHON_DOCKERFILE, PYTHON_IMAGES, stage

PARTS = ["ingestor", *PYTHON_IMAGES]

SKAFFOLD = ROOT / "skaffold.yaml"
MK = ROOT / "mk" / "k8s.mk"


@pytest.fixture(scope="module")
def skaffold():
    return load_yaml(SKAFFOLD)


def _skaffold_schema():
    return SCHEMAS / "skaffold" / "v4beta14.json"


def test_skaffold_yaml_should_validate_against_the_v4beta14_schema(skaffold):
    checker = tool("check-jsonschema")
    proc = run([checker, "--schemafile", str(_skaffold_schema()), str(SKAFFOLD)], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert skaffold["apiVersion"] == "skaffold/v4beta14"  # a plain string in the schema
    assert skaffold["kind"] == "Config"


def test_the_skaffold_schema_check_should_reject_a_misspelt_key(skaffold, tmp_path):
    checker = tool("check-jsonschema")
    broken = json.loads(json.dumps(skaffold))
    broken["deploy"]["helm"]["releases"][0]["chartPth"] = broken["deploy"]["helm"]["releases"][0].pop("chartPath")
    path = tmp_path / "skaffold.json"
    path.write_text(json.dumps(broken))
    assert run([checker, "--schemafile", str(_skaffold_schema()), str(path)], check=False).returncode != 0


def test_skaffold_should_build_every_chart_image_from_an_existing_dockerfile(skaffold, values):
    artifacts = {a["image"]: a for a in skaffold["build"]["artifacts"]}
    assert set(artifacts) == {v["repository"] for v in values["images"].values()}
    for image, a in artifacts.items():
        dockerfile = ROOT / a.get("context", ".") / a["docker"]["dockerfile"]
        if image == "visiontrack/ingestor" and not dockerfile.exists():
            continue  # written with the Rust ingestor (rust-ingestor/Dockerfile)
        assert dockerfile.exists(), f"{image}: {dockerfile} does not exist"
        if "target" in a["docker"]:
            stage(dockerfile.read_text(), a["docker"]["target"])


@pytest.mark.parametrize("part", PYTHON_IMAGES)
def test_skaffold_should_build_each_python_image_as_its_own_part(skaffold, part):
    """services/Dockerfile builds any Python part: SERVICE (what is wheeled) and the target (port, command)
    must both name the part the image is called after, or the image holds another part's code."""
    docker = {a["image"]: a for a in skaffold["build"]["artifacts"]}[f"visiontrack/{part}"]["docker"]
    assert ROOT / docker["dockerfile"] == PYTHON_DOCKERFILE
    assert docker.get("target") == part
    assert docker.get("buildArgs") == {"SERVICE": part}


def test_skaffold_should_set_values_the_chart_has_to_the_images_it_built(skaffold, values):
    release = skaffold["deploy"]["helm"]["releases"][0]
    assert (ROOT / release["chartPath"]) == CHART
    images = {a["image"] for a in skaffold["build"]["artifacts"]}
    for key, template in {**release["setValueTemplates"], **release.get("setValues", {})}.items():
        node = values
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"skaffold sets {key}, which the chart does not have"
            node = node[part]
        for ref in re.findall(r"\.IMAGE_(?:REPO|TAG|DIGEST)_(\w+)", str(template)):
            assert ref in {i.replace("/", "_").replace("-", "_") for i in images}, template
    for name, image in values["images"].items():
        assert release["setValueTemplates"][f"images.{name}.repository"] == \
            "{{.IMAGE_REPO_%s}}" % image["repository"].replace("/", "_")


def test_skaffold_should_have_kind_and_minikube_profiles(skaffold):
    profiles = {p["name"]: p for p in skaffold["profiles"]}
    assert set(profiles) >= {"kind", "minikube"}
    kind_cfg = load_yaml(ROOT / "k8s" / "kind-config.yaml")
    assert profiles["kind"]["activation"][0]["kubeContext"] == f"kind-{kind_cfg['name']}"


def test_the_kind_cluster_should_publish_ports_80_443_and_1883_where_the_ingress_controller_binds(values):
    kind_cfg = load_yaml(ROOT / "k8s" / "kind-config.yaml")
    traefik = load_yaml(ROOT / "k8s" / "traefik-kind-values.yaml")
    nodes = [n for n in kind_cfg["nodes"] if all(n.get("labels", {}).get(k) == v for k, v in traefik["nodeSelector"].items())]
    assert len(nodes) == 1, "exactly one node carries the ingress controller's nodeSelector labels"
    mapped = {m["containerPort"]: m["hostPort"] for m in nodes[0]["extraPortMappings"]}
    assert mapped == {80: 80, 443: 443, 1883: 1883}
    assert {traefik["ports"][p]["hostPort"] for p in ("web", "websecure", "mqtt")} == {80, 443, 1883}
    base = load_yaml(ROOT / "k8s" / "traefik-values.yaml")
    assert base["ports"]["mqtt"]["port"] == 1883, "the hostPort binds Traefik's mqtt entry point"
    assert values["ingestor"]["mqtt"]["traefikRoute"]["entryPoints"] == ["mqtt"]
    if nodes[0]["role"] == "control-plane":
        assert any(t["key"] == "node-role.kubernetes.io/control-plane" for t in traefik["tolerations"])


def _mk_var(name: str) -> str:
    m = re.search(rf"^{name}\s*\?=\s*(\S+)", MK.read_text(), re.M)
    assert m, f"mk/k8s.mk does not define {name}"
    return m.group(1)


def test_the_chart_network_policies_should_admit_the_ingress_controller_and_prometheus_namespaces(values):
    traefik = load_yaml(ROOT / "k8s" / "traefik-values.yaml")
    assert traefik["ingressClass"]["isDefaultClass"] is True and values["ingress"]["className"] == ""
    namespaces = {"traefik": values["networkPolicy"]["apiFrom"], _mk_var("MONITORING_NAMESPACE"): values["networkPolicy"]["metricsFrom"]}
    assert "--namespace traefik" in MK.read_text()
    for namespace, peers in namespaces.items():
        assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}} in peers
    grafana = values["networkPolicy"]["postgresFrom"][0]
    assert grafana["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == _mk_var("MONITORING_NAMESPACE")


def test_kube_prometheus_stack_should_select_the_chart_monitors_and_load_its_dashboards(values):
    kps = load_yaml(ROOT / "k8s" / "kube-prometheus-stack-values.yaml")
    # The release label the chart puts on its ServiceMonitors/PrometheusRule is this Helm release's name.
    dry_run = run([tool("make"), "--no-print-directory", "-n", "-f", str(MK), "monitoring", "HELM=helm",
                   "KPS_CHART=kps.tgz"], cwd=str(ROOT)).stdout
    assert f"upgrade --install {values['monitoring']['release']} kps.tgz" in dry_run
    dashboards = kps["grafana"]["sidecar"]["dashboards"]
    assert (dashboards["enabled"], dashboards["label"], dashboards["labelValue"]) == (True, "grafana_dashboard", "1")
    assert dashboards["searchNamespace"] == "ALL"
    assert kps["prometheus"]["prometheusSpec"]["serviceMonitorNamespaceSelector"] == {}


REQUIRED_TARGETS = ["kind-up", "minikube-up", "images", "load", "deploy", "monitoring", "undeploy", "port-forward",
                    "chart-lint", "chart-test"]


def test_every_kubernetes_make_target_should_exist_with_a_help_line():
    text = MK.read_text()
    assert re.search(r"^##@ Kubernetes$", text, re.M)
    for target in REQUIRED_TARGETS:
        assert re.search(rf"^{re.escape(target)}:[^\n]*## \S", text, re.M), f"{target} lacks a '## help' line"
        assert re.search(rf"^\.PHONY: {re.escape(target)}$", text, re.M), target


def test_tool_versions_should_be_pinned_in_one_place():
    for name in ("HELM_VERSION", "KIND_VERSION", "TRAEFIK_CHART_VERSION", "KPS_CHART_VERSION"):
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", _mk_var(name)), name
    script = (ROOT / "scripts" / "install-chart-tools.sh").read_text()
    assert f'HELM_VERSION="${{HELM_VERSION:-{_mk_var("HELM_VERSION")}}}"' in script


def test_make_images_should_build_each_python_part_from_the_one_dockerfile(tmp_path):
    """With a stand-in docker that records its arguments: every Python image is built from
    services/Dockerfile with SERVICE and the target naming its part, from the repository root."""
    log = tmp_path / "docker.log"
    docker = tmp_path / "docker"
    docker.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" "(end of call)" >> "{log}"\n')
    docker.chmod(0o755)
    run([tool("make"), "--no-print-directory", "-f", str(MK), "images", f"DOCKER={docker}", "IMAGE_TAG=t"],
        cwd=str(ROOT))
    calls = [c.strip("\n").split("\n") for c in log.read_text().split("(end of call)\n") if c.strip()]
    builds = {c[c.index("-t") + 1]: c for c in calls if c[0] == "build"}
    for part in PYTHON_IMAGES:
        argv = builds[f"visiontrack/{part}:t"]
        assert argv[argv.index("-f") + 1] == "services/Dockerfile", argv
        assert argv[argv.index("--build-arg") + 1] == f"SERVICE={part}", argv
        assert argv[argv.index("--target") + 1] == part, argv
        assert argv[-1] == ".", argv
        stage(PYTHON_DOCKERFILE.read_text(), part)


def test_make_images_should_say_clearly_when_neither_docker_nor_buildah_is_there(tmp_path):
    make = tool("make")
    proc = run([make, "--no-print-directory", "-f", str(MK), "images", "DOCKER=docker-that-is-not-installed",
                "BUILDAH=buildah-that-is-not-installed"], check=False, cwd=str(ROOT))
    assert proc.returncode != 0
    assert "not found" in proc.stdout + proc.stderr


def _recorder(path, exit_code: int = 0):
    """A stand-in program that appends its arguments to path.log and exits with exit_code."""
    path.write_text(f'#!/bin/sh\nprintf "%s " "$@" >> "{path}.log"\necho >> "{path}.log"\nexit {exit_code}\n')
    path.chmod(0o755)
    return path


def test_make_images_should_build_with_buildah_when_no_docker_engine_answers(tmp_path):
    """Without a Docker engine (docker info fails), make images hands the build to k8s/local/images.sh,
    which builds the four images with buildah from the same Dockerfiles."""
    docker = _recorder(tmp_path / "docker", exit_code=1)
    images_sh = _recorder(tmp_path / "images.sh")
    run([tool("make"), "--no-print-directory", "-f", str(MK), "images", f"DOCKER={docker}", "BUILDAH=true",
         f"IMAGES_SH={images_sh}", "IMAGE_TAG=t"], cwd=str(ROOT))
    assert (tmp_path / "images.sh.log").read_text().split("\n")[0].split() == ["project", "t"]
    assert "build" not in (tmp_path / "docker.log").read_text()


def test_make_load_should_put_the_four_images_into_the_local_cluster(tmp_path):
    images_sh = _recorder(tmp_path / "images.sh")
    run([tool("make"), "--no-print-directory", "-f", str(MK), "load", "K8S_CLUSTER=local", f"IMAGES_SH={images_sh}",
         "IMAGE_TAG=t"], cwd=str(ROOT))
    calls = [c.split() for c in (tmp_path / "images.sh.log").read_text().splitlines() if c.strip()]
    loaded = next(c for c in calls if c[0] == "load")
    assert {f"visiontrack/{p}:t" for p in PARTS} <= set(loaded[1:]), calls
