"""Talking to the cluster the tests run on: kubectl, the release's tokens, the ingress controller's
address, and short-lived probe pods that try connections from a chosen namespace."""
from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass

KUBECTL = os.environ.get("KUBECTL", "kubectl")
HELM = os.environ.get("HELM", "helm")
NAMESPACE = os.environ.get("VT_TEST_NAMESPACE", "visiontrack")
# local (the cluster of k8s/local, whose pods reach this machine), kind, minikube, or another.
K8S_CLUSTER = os.environ.get("K8S_CLUSTER", "")
RELEASE = os.environ.get("VT_TEST_RELEASE", "visiontrack")
# The ingress controller's namespace and Service (k8s/traefik-values.yaml).
TRAEFIK_NAMESPACE = "traefik"
# The image the chart's helm test runs: it has curl, and every cluster that ran the chart has it.
PROBE_IMAGE = os.environ.get("VT_PROBE_IMAGE", "docker.io/curlimages/curl:8.17.0")


def kubectl(*args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> str:
    done = subprocess.run([KUBECTL, *args], input=input, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def kubectl_json(*args: str) -> dict:
    return json.loads(kubectl(*args, "-o", "json"))


def release_tokens() -> tuple[str, str]:
    """The first admin and reader tokens of the release's Secret; with no reader token (the chart
    generates none), the admin token reads."""
    data = kubectl_json("-n", NAMESPACE, "get", "secret", f"{RELEASE}-secrets")["data"]

    def first(key: str) -> str:
        return base64.b64decode(data.get(key, "")).decode().split(",")[0].strip()

    admin = first("VT_ADMIN_TOKENS")
    return admin, first("VT_READER_TOKENS") or admin


def _reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def ingress_url() -> str:
    """Where REST goes in: VT_E2E_URL when set; else Traefik's load balancer address (minikube
    tunnel, cloud); else its Service address when this machine reaches it (the local cluster); else
    localhost (kind maps the node's port 80 there)."""
    if os.environ.get("VT_E2E_URL"):
        return os.environ["VT_E2E_URL"].rstrip("/")
    service = kubectl_json("-n", TRAEFIK_NAMESPACE, "get", "service", "traefik")
    for entry in service.get("status", {}).get("loadBalancer", {}).get("ingress", []) or []:
        return f"http://{entry.get('ip') or entry['hostname']}"
    cluster_ip = service["spec"].get("clusterIP")
    if cluster_ip and cluster_ip != "None" and _reachable(cluster_ip, 80):
        return f"http://{cluster_ip}"
    return "http://localhost"


def service_host(component: str) -> str:
    return f"{RELEASE}-{component}.{NAMESPACE}.svc.cluster.local"


class ServiceAddress:
    """host:port of a Service as this machine reaches it: its cluster address where routed here (the
    local cluster), else through `kubectl port-forward` for as long as the object lives."""

    def __init__(self, namespace: str, name: str, port: int):
        spec = kubectl_json("-n", namespace, "get", "service", name)["spec"]
        self._forward = None
        if _reachable(spec["clusterIP"], port):
            self.host, self.port = spec["clusterIP"], port
            return
        self.host, self.port = "127.0.0.1", _free_port()
        self._forward = subprocess.Popen([KUBECTL, "-n", namespace, "port-forward", f"service/{name}",
                                          f"{self.port}:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not _reachable(self.host, self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"kubectl port-forward to {namespace}/{name}:{port} did not open")
            time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        if self._forward:
            self._forward.terminate()
            self._forward.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ProbePod:
    """A pod that only sleeps, from which connections are tried with `kubectl exec`."""
    namespace: str
    name: str

    def connects(self, host: str, port: int, timeout: float = 3) -> bool:
        """Whether a TCP connection to host:port is established from this pod. curl's exit code 28 at
        the connect timeout means no answer at all, which is what a policy's drop looks like; any
        other outcome (an HTTP answer, a refused or non-HTTP reply) means the connection was made."""
        done = subprocess.run(
            [KUBECTL, "-n", self.namespace, "exec", self.name, "--", "curl", "-s", "-o", "/dev/null",
             "--connect-timeout", str(timeout), "-m", str(timeout + 5), f"http://{host}:{port}/"],
            capture_output=True, text=True, timeout=timeout + 30)
        if done.returncode in (6, 7):  # name not resolved, connection refused: not a policy question
            raise AssertionError(f"{host}:{port} from {self.namespace}: curl exit {done.returncode} "
                                 f"{done.stderr.strip()}")
        return done.returncode != 28

    def delete(self) -> None:
        kubectl("-n", self.namespace, "delete", "pod", self.name, "--wait=false", "--grace-period=0",
                "--force", check=False)


def start_probe(namespace: str, labels: dict[str, str] | None = None) -> ProbePod:
    name = f"vt-probe-{uuid.uuid4().hex[:8]}"
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"visiontrack.io/probe": "true", **(labels or {})}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "probe", "image": PROBE_IMAGE, "imagePullPolicy": "IfNotPresent",
                "command": ["sleep", "3600"],
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(pod))
    kubectl("-n", namespace, "wait", "--for=condition=Ready", f"pod/{name}", "--timeout=120s", timeout=150)
    return ProbePod(namespace, name)


def ensure_namespace(name: str) -> bool:
    """Create the namespace if missing (after one being deleted is gone); return whether this call
    created it."""
    phase = kubectl("get", "namespace", name, "-o", "jsonpath={.status.phase}", "--ignore-not-found").strip()
    if phase == "Terminating":
        kubectl("wait", "--for=delete", f"namespace/{name}", "--timeout=120s", timeout=150)
    elif phase:
        return False
    kubectl("create", "namespace", name)
    return True


def node_address() -> str:
    """The node's InternalIP: on the local cluster this machine itself, which pods reach."""
    node = kubectl_json("get", "nodes")["items"][0]
    return next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")


def e2e_environment(webhook_port: int | None = None) -> dict[str, str]:
    """What tests/e2e needs to run against this release (tests/e2e/conftest.py): the ingress URL, the
    tokens and, when given a port, a webhook URL on this machine as the pods see it (the local cluster
    runs on this machine, so its node address is this machine's)."""
    admin, reader = release_tokens()
    env = {"VT_E2E_URL": ingress_url(), "VT_E2E_ADMIN_TOKEN": admin, "VT_E2E_READER_TOKEN": reader}
    if webhook_port:
        env["VT_E2E_WEBHOOK_URL"] = f"http://{node_address()}:{webhook_port}/"
    return env


if __name__ == "__main__":  # `python -m tests.cluster.kube e2e-env [WEBHOOK_PORT]`: shell exports
    import shlex
    import sys

    if sys.argv[1:2] != ["e2e-env"]:
        sys.exit("usage: python -m tests.cluster.kube e2e-env [WEBHOOK_PORT]")
    port = int(sys.argv[2]) if len(sys.argv) > 2 else None
    for name, value in e2e_environment(port).items():
        print(f"export {name}={shlex.quote(value)}")
