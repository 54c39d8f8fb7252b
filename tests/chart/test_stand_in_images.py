"""The local cluster has no registry to pull from: it runs only the images k8s/local/images.sh builds and
loads. So every image a chart of that cluster runs must be one of images.sh's names, spelled as containerd
spells it, or its pod waits in ImagePullBackOff: the VisionTrack chart (every mode, and the tag
`make deploy` gives), the Traefik chart and kube-prometheus-stack with the cluster side's values.

The two third-party charts are packaged files named by TRAEFIK_CHART and KPS_CHART (as .ci/run sets them);
without those the checks on them skip."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from .helpers import CHART, MODES, NAMESPACE, RELEASE, ROOT, load_yaml_all, run

IMAGES_SH = ROOT / "k8s" / "local" / "images.sh"
# A VisionTrack image, from any registry (the chart's imageDefaults.registry may name one).
PROJECT_REPOSITORY = re.compile(r"(^|/)visiontrack/(ingestor|registry|query|aggregator)$")
# kube-prometheus-stack's parts the local cluster does not run, having no stand-in for them: Grafana
# (AGPL, never built here), kube-state-metrics, node-exporter, and the admission webhooks (their
# certificate Job's image; without the webhooks the operator must not wait for their TLS secret).
KPS_LOCAL_SETTINGS = ["grafana.enabled=false", "kubeStateMetrics.enabled=false", "nodeExporter.enabled=false",
                      "prometheusOperator.admissionWebhooks.enabled=false", "prometheusOperator.tls.enabled=false"]
# make deploy's tag (IMAGE_TAG in mk/k8s.mk), which `images.sh project` builds by default too.
DEPLOY_TAG = "dev"


def normalize(ref: str) -> str:
    """An image reference as containerd and the kubelet resolve it: traefik:v3.6.0 is
    docker.io/library/traefik:v3.6.0, visiontrack/query:dev is docker.io/visiontrack/query:dev."""
    first, _, rest = ref.partition("/")
    if not rest:
        ref = f"docker.io/library/{ref}"
    elif "." not in first and ":" not in first and first != "localhost":
        ref = f"docker.io/{ref}"
    elif first == "docker.io" and "/" not in rest:
        ref = f"docker.io/library/{rest}"
    if ":" not in ref.rsplit("/", 1)[-1] and "@" not in ref:
        ref += ":latest"
    return ref


def stand_ins(tag: str = DEPLOY_TAG) -> set[str]:
    """Every name images.sh builds, its project images with `tag`."""
    bash = shutil.which("bash")
    if bash is None or not IMAGES_SH.exists():
        pytest.skip("bash or k8s/local/images.sh is missing")
    out = run([bash, str(IMAGES_SH), "names"], env={**os.environ, "IMAGE_TAG": tag}).stdout.split()
    assert out, "images.sh names printed nothing"
    return set(out)


def _walk(node, found: set[str]) -> None:
    if isinstance(node, dict):
        for key in ("containers", "initContainers", "ephemeralContainers"):
            for container in node.get(key) or []:
                if isinstance(container, dict) and isinstance(container.get("image"), str):
                    found.add(container["image"])
        for value in node.values():
            _walk(value, found)
    elif isinstance(node, list):
        for value in node:
            _walk(value, found)


def images_run_by(objs: list[dict]) -> set[str]:
    """The images the objects make the cluster run, normalized: every container of every pod template,
    the Prometheus Operator's custom resources (spec.image), and the config reloader the operator adds
    to them (its --prometheus-config-reloader argument)."""
    found: set[str] = set()
    for obj in objs:
        _walk(obj, found)
        if obj.get("kind") in ("Prometheus", "Alertmanager", "ThanosRuler", "PrometheusAgent"):
            if obj.get("spec", {}).get("image"):
                found.add(obj["spec"]["image"])
    for obj in objs:
        for container in obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            for arg in container.get("args", []) or []:
                if isinstance(arg, str) and arg.startswith("--prometheus-config-reloader="):
                    found.add(arg.split("=", 1)[1])
    return {normalize(i) for i in found}


def without_stand_in(images: set[str], names: set[str], *, third_party_only: bool = False) -> list[str]:
    """The images that images.sh does not build. third_party_only: VisionTrack's own images are not
    looked at (whatever their registry and tag, `images.sh project TAG` or a registry provides them)."""
    return [i for i in sorted(images)
            if i not in names and not (third_party_only and PROJECT_REPOSITORY.search(repository(i)))]


def repository(ref: str) -> str:
    """The reference without its digest or tag."""
    ref = ref.split("@", 1)[0]
    head, _, last = ref.rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]


def helm_template(helm: str, chart: str | Path, release: str, namespace: str, *args: str) -> list[dict]:
    text = run([helm, "template", release, str(chart), "--namespace", namespace, *args]).stdout
    return [o for o in load_yaml_all(text) if isinstance(o, dict)]


def packaged_chart(variable: str) -> Path:
    value = os.environ.get(variable, "")
    if not value:
        pytest.skip(f"{variable} is not set (the packaged chart, as .ci/run sets it)")
    path = Path(value)
    if not path.exists():
        pytest.skip(f"{variable}={value} does not exist")
    return path


# --- images.sh's own list ---------------------------------------------------------------------------

def test_images_sh_should_name_each_image_once_and_fully_qualified():
    bash = shutil.which("bash")
    if bash is None or not IMAGES_SH.exists():
        pytest.skip("bash or k8s/local/images.sh is missing")
    names = run([bash, str(IMAGES_SH), "names"]).stdout.split()
    assert len(names) == len(set(names)), names
    assert [n for n in names if normalize(n) != n] == []


def test_normalize_should_spell_names_as_containerd_does():
    assert normalize("traefik:v3.6.0") == "docker.io/library/traefik:v3.6.0"
    assert normalize("docker.io/traefik:v3.6.0") == "docker.io/library/traefik:v3.6.0"
    assert normalize("visiontrack/query:dev") == "docker.io/visiontrack/query:dev"
    assert normalize("quay.io/prometheus/prometheus:v3.14.0-distroless") == "quay.io/prometheus/prometheus:v3.14.0-distroless"
    assert normalize("localhost:5000/x") == "localhost:5000/x:latest"


# --- the VisionTrack chart --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_every_third_party_image_the_chart_runs_should_have_a_stand_in(render, mode):
    images = images_run_by(render(mode))
    assert images, "the chart rendered no image"
    assert without_stand_in(images, stand_ins(), third_party_only=True) == []


def test_the_images_make_deploy_installs_should_all_be_built_by_images_sh(helm):
    """make deploy passes imageDefaults.tag=$(IMAGE_TAG): the four VisionTrack images with that tag, which
    `images.sh project` builds by default, and the in-chart databases, exporters and helm test image."""
    objs = helm_template(helm, CHART, RELEASE, NAMESPACE, "--set", f"imageDefaults.tag={DEPLOY_TAG}",
                         "--api-versions", "monitoring.coreos.com/v1")
    images = images_run_by(objs)
    assert {f"docker.io/visiontrack/{p}:{DEPLOY_TAG}" for p in ("ingestor", "registry", "query", "aggregator")} <= images
    assert without_stand_in(images, stand_ins(DEPLOY_TAG)) == []


def test_the_check_should_catch_an_image_without_a_stand_in(helm):
    """A changed tag in the chart's values is an image no stand-in has: the check must say so."""
    objs = helm_template(helm, CHART, RELEASE, NAMESPACE, "--set", f"imageDefaults.tag={DEPLOY_TAG}",
                         "--set", "redis.image.tag=7.2.4-bookworm", "--api-versions", "monitoring.coreos.com/v1")
    assert without_stand_in(images_run_by(objs), stand_ins(DEPLOY_TAG)) == ["docker.io/library/redis:7.2.4-bookworm"]
    # A VisionTrack image under another tag than the one built is missing too.
    objs = helm_template(helm, CHART, RELEASE, NAMESPACE, "--set", "imageDefaults.tag=other")
    assert "docker.io/visiontrack/query:other" in without_stand_in(images_run_by(objs), stand_ins(DEPLOY_TAG))


# --- the cluster side's charts ------------------------------------------------------------------------

def test_the_traefik_chart_images_should_have_stand_ins(helm):
    chart = packaged_chart("TRAEFIK_CHART")
    values = [ROOT / "k8s" / "traefik-values.yaml", ROOT / "k8s" / "local" / "traefik-values.yaml"]
    args = [a for f in values if f.exists() for a in ("--values", str(f))]
    images = images_run_by(helm_template(helm, chart, "traefik", "traefik", *args))
    assert images, "the Traefik chart rendered no image"
    assert without_stand_in(images, stand_ins()) == []


def test_kube_prometheus_stack_images_should_have_stand_ins(helm):
    chart = packaged_chart("KPS_CHART")
    kps_values = ROOT / "k8s" / "kube-prometheus-stack-values.yaml"
    args = ["--values", str(kps_values)] + [a for s in KPS_LOCAL_SETTINGS for a in ("--set", s)]
    objs = helm_template(helm, chart, "kube-prometheus-stack", "monitoring", *args)
    images = images_run_by(objs)
    # The operator, Prometheus (its custom resource), Alertmanager and the reloader the operator injects.
    assert {i.split("/")[-1].split(":")[0] for i in images} >= {"prometheus-operator", "prometheus", "alertmanager",
                                                                "prometheus-config-reloader"}, images
    assert without_stand_in(images, stand_ins()) == []
    # Without the local settings Grafana and the rest come back: they have no stand-in, so the settings matter.
    full = images_run_by(helm_template(helm, chart, "kube-prometheus-stack", "monitoring", "--values", str(kps_values)))
    assert any("grafana" in i for i in without_stand_in(full, stand_ins()))


def test_the_operator_should_not_wait_for_a_webhook_secret_no_job_makes(helm):
    """With the admission webhooks off, nothing creates their TLS secret: the operator must not mount it."""
    chart = packaged_chart("KPS_CHART")
    args = ["--values", str(ROOT / "k8s" / "kube-prometheus-stack-values.yaml")]
    args += [a for s in KPS_LOCAL_SETTINGS for a in ("--set", s)]
    objs = helm_template(helm, chart, "kube-prometheus-stack", "monitoring", *args)
    secrets = {v["secret"]["secretName"] for o in objs if o["kind"] == "Deployment"
               for v in o["spec"]["template"]["spec"].get("volumes") or [] if "secret" in v}
    assert not [s for s in secrets if s.endswith("-admission")], secrets
