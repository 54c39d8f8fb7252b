#!/usr/bin/env bash
# `make test-cluster`: VisionTrack on the cluster kubectl points at (the local one, kind, minikube).
# Stages, each timed: images into the cluster, kube-prometheus-stack (make monitoring, unless the
# cluster has it), install (helm --wait, with tests/cluster/values.yaml), helm test, the e2e suite through
# the ingress controller, MQTT through its Service (plain and TLS) and through Traefik, NetworkPolicies both ways, the HTTPRoute through a Gateway, monitoring (targets,
# rules, alerts, dashboards), autoscaling, pod-kill drills under load, helm upgrade to another image tag
# under a steady ingest load, uninstall.
# A summary of stage times ends the run; a failing stage prints the cluster's state and stops the run.
# Environment (the Makefile passes these): HELM, KUBECTL, K8S_CLUSTER, IMAGE_TAG, K8S_NAMESPACE, K8S_RELEASE;
# VT_TEST_MONITORING=0 leaves kube-prometheus-stack out (its tests then skip).
set -euo pipefail
cd "$(dirname "$0")/.."

HELM=${HELM:-helm}
KUBECTL=${KUBECTL:-kubectl}
K8S_CLUSTER=${K8S_CLUSTER:-auto}
# The local cluster (k8s/local), when it runs and KUBECONFIG names no other: its kubeconfig and kubectl.
LOCAL_KUBECONFIG=$PWD/run/cluster/kubeconfig
if [ -z "${KUBECONFIG:-}" ] && [ -f "$LOCAL_KUBECONFIG" ]; then export KUBECONFIG=$LOCAL_KUBECONFIG; fi
if [ "${KUBECONFIG:-}" = "$LOCAL_KUBECONFIG" ]; then
    K8S_CLUSTER=local
    KUBECTL=$(k8s/local/tools.sh bin kubernetes)/kubectl
fi
IMAGE_TAG=${IMAGE_TAG:-dev}
NEXT_TAG=${IMAGE_TAG}-next
NAMESPACE=${K8S_NAMESPACE:-visiontrack}
RELEASE=${K8S_RELEASE:-visiontrack}
PYTEST=(.venv/bin/python -m pytest -q -p no:cacheprovider)
export VT_CLUSTER_TESTS=1 VT_TEST_NAMESPACE=$NAMESPACE VT_TEST_RELEASE=$RELEASE KUBECTL HELM K8S_CLUSTER IMAGE_TAG

TIMES=()
started_all=$SECONDS
stage() {
    local name=$1 started=$SECONDS
    shift
    echo "==> [test-cluster] $name"
    # In a subshell outside any condition, so that set -e stops the stage at its first failing command
    # (inside `if`, bash ignores set -e for the whole function, and only its last command would count).
    local failed=0
    set +e
    (set -e; "$@")
    failed=$?
    set -e
    if [ "$failed" != 0 ]; then
        TIMES+=("$(printf '%-44s %5d s  FAILED' "$name" $((SECONDS - started)))")
        diagnose
        summary
        exit 1
    fi
    TIMES+=("$(printf '%-44s %5d s' "$name" $((SECONDS - started)))")
}
summary() {
    echo "---- test-cluster: time per stage"
    printf '  %s\n' "${TIMES[@]}"
    echo "  total $((SECONDS - started_all)) s"
}
diagnose() {
    echo "---- cluster state at the failure"
    $KUBECTL get pods -A -o wide || true
    $KUBECTL -n "$NAMESPACE" get events --sort-by=.lastTimestamp 2>/dev/null | tail -n 30 || true
    local pod
    for pod in $($KUBECTL -n "$NAMESPACE" get pods -o name 2>/dev/null); do
        echo "---- $pod"
        $KUBECTL -n "$NAMESPACE" logs "$pod" --all-containers --tail 20 2>/dev/null || true
    done
}

images() {
    make --no-print-directory images load IMAGE_TAG="$IMAGE_TAG" K8S_CLUSTER="$K8S_CLUSTER"
    # The upgrade stage rolls every part to another tag of the same build.
    make --no-print-directory retag-images load FROM_TAG="$IMAGE_TAG" IMAGE_TAG="$NEXT_TAG" K8S_CLUSTER="$K8S_CLUSTER"
}

# kube-prometheus-stack before the chart, so the chart renders its ServiceMonitors and rules.
monitoring() {
    if [ "${VT_TEST_MONITORING:-1}" = 0 ]; then
        echo "    VT_TEST_MONITORING=0: not installed"
    elif $KUBECTL get crd servicemonitors.monitoring.coreos.com >/dev/null 2>&1 &&
        $KUBECTL -n monitoring get service kube-prometheus-stack-prometheus >/dev/null 2>&1; then
        echo "    already installed"
    else
        make --no-print-directory monitoring
    fi
}

# MQTT over TLS is on in tests/cluster/values.yaml: a self-signed certificate in the Secret it names.
MQTT_TLS_SECRET=visiontrack-test-mqtt-tls
mqtt_tls_secret() {
    $KUBECTL -n "$NAMESPACE" get secret "$MQTT_TLS_SECRET" >/dev/null 2>&1 && return 0
    local dir
    dir=$(mktemp -d)
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
        -subj "/CN=$RELEASE-ingestor-mqtt" -addext "subjectAltName=DNS:$RELEASE-ingestor-mqtt.$NAMESPACE.svc" \
        -keyout "$dir/tls.key" -out "$dir/tls.crt" 2>/dev/null
    $KUBECTL create namespace "$NAMESPACE" --dry-run=client -o yaml | $KUBECTL apply -f - >/dev/null
    $KUBECTL -n "$NAMESPACE" create secret tls "$MQTT_TLS_SECRET" --cert "$dir/tls.crt" --key "$dir/tls.key"
    rm -rf "$dir"
}

install() {
    mqtt_tls_secret
    $HELM upgrade --install "$RELEASE" charts/visiontrack --namespace "$NAMESPACE" --create-namespace \
        --set imageDefaults.tag="$IMAGE_TAG" -f tests/cluster/values.yaml --wait --timeout 10m
}

helm_test() { $HELM test "$RELEASE" --namespace "$NAMESPACE" --logs --timeout 5m; }

pytest_stage() { "${PYTEST[@]}" "$@"; }

# The e2e suite, unchanged, through the ingress controller; on the local cluster the pods reach this
# machine, so the alert tests' webhook receiver runs here too.
e2e_suite() {
    local webhook_port=""
    [ "$K8S_CLUSTER" = local ] && webhook_port=18931
    eval "$(.venv/bin/python -m tests.cluster.kube e2e-env $webhook_port)"
    echo "    through $VT_E2E_URL"
    pytest_stage tests/e2e
}

uninstall() {
    $HELM uninstall "$RELEASE" --namespace "$NAMESPACE" --wait --timeout 5m
    $KUBECTL -n "$NAMESPACE" delete secret "$MQTT_TLS_SECRET" --ignore-not-found
    pytest_stage tests/cluster/test_uninstall.py
    $KUBECTL delete namespace "$NAMESPACE" --wait=true --timeout=5m
}

stage "images into the cluster" images
stage "kube-prometheus-stack" monitoring
stage "install (helm --wait)" install
stage "helm test" helm_test
stage "a clean install: pods, restarts, logs" pytest_stage tests/cluster/test_clean_install.py
stage "e2e suite through the ingress" e2e_suite
stage "MQTT: its Service, plain and TLS; Traefik" pytest_stage tests/cluster/test_mqtt.py
stage "NetworkPolicies both ways" pytest_stage tests/cluster/test_network_policies.py
stage "HTTPRoute through the Gateway" pytest_stage tests/cluster/test_gateway_route.py
stage "monitoring: targets, rules, alerts, dashboards" pytest_stage tests/cluster/test_monitoring.py
stage "autoscaling (HPA on metrics-server)" pytest_stage tests/cluster/test_autoscaling.py
stage "drills: pods killed, Deployments restarted" pytest_stage -s tests/cluster/test_drills.py
stage "upgrade under load" pytest_stage tests/cluster/test_upgrade_under_load.py
stage "uninstall leaves nothing" uninstall
summary
