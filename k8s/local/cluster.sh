#!/usr/bin/env bash
# A throwaway single-node Kubernetes on this Linux machine, without Docker: etcd, the control plane,
# containerd, the kubelet and kube-proxy as host processes; pods on a bridge of their own; CoreDNS and
# a NetworkPolicy engine as pods. Run as root.
#   cluster.sh deps     install the Debian packages it runs on (containerd, runc, etcd, CNI plugins...)
#   cluster.sh prepare  build every tool and image the cluster and `make test-cluster` need (cached),
#                       changing nothing else on the host: safe to run beside other work
#   cluster.sh up       build what is missing (cached), start everything, wait until the node is Ready
#   cluster.sh down     stop everything and undo every change to the host (processes, mounts, bridge,
#                       routes, iptables rules, sysctls, cgroups); removes the cluster's state
#   cluster.sh status   what runs
#   cluster.sh host-state   what `down` restores (interfaces, routes, iptables, mounts, sysctls,
#                           folders, processes), to compare before `up` and after `down`
# Both up and down are safe to run again. kubectl: export KUBECONFIG=run/cluster/kubeconfig
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$LOCAL_DIR/pki.sh"
. "$LOCAL_DIR/host.sh"
. "$LOCAL_DIR/processes.sh"
. "$LOCAL_DIR/config.sh"

DEBIAN_PACKAGES=(containerd runc etcd-server containernetworking-plugins iptables nftables conntrack openssl
                 gettext-base podman buildah skopeo mmdebstrap uidmap fuse-overlayfs)
# In start order; `down` stops them in reverse.
PROCESSES=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy)
VOLUMES=8

K8S_BIN=""
kubectl() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

deps() {
    local missing=() pkg
    for pkg in "${DEBIAN_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        say "cluster packages: all present"
        return
    fi
    command -v apt-get >/dev/null || die "missing ${missing[*]}, and no apt-get here: install them yourself"
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Everything this machine must have, checked before anything changes; each failure says what to do.
preflight() {
    local problems=() cmd port
    [ "$(id -u)" -eq 0 ] || die "the local cluster needs root (it creates a bridge, iptables rules and runs
containerd): run it with sudo, or use kind where Docker runs (make kind-up)"
    [ "$(uname -s)" = Linux ] || die "the local cluster runs on Linux only; elsewhere use kind or minikube"
    grep -qw overlay /proc/filesystems || problems+=("the kernel has no overlayfs (containerd's snapshotter needs it)")
    [ -d /sys/fs/cgroup/memory ] || [ -f /sys/fs/cgroup/cgroup.controllers ] ||
        problems+=("no cgroup hierarchy is mounted at /sys/fs/cgroup")
    [ -d /proc/sys/net/bridge ] || problems+=("the kernel has no br_netfilter (modprobe br_netfilter)")
    for cmd in containerd runc etcd iptables ip6tables ip openssl conntrack envsubst; do
        command -v "$cmd" >/dev/null || problems+=("'$cmd' is missing (make cluster-deps installs it)")
    done
    for cmd in bridge host-local portmap loopback; do
        [ -x "/usr/lib/cni/$cmd" ] || problems+=("the CNI plugin /usr/lib/cni/$cmd is missing (containernetworking-plugins)")
    done
    if ip link show "$BRIDGE" >/dev/null 2>&1 && [ ! -f "$HOST_BEFORE" ]; then
        problems+=("an interface named $BRIDGE exists and is not this cluster's (VT_CLUSTER_BRIDGE names another)")
    fi
    if ! alive kube-apiserver && ip route show | grep -v "dev $BRIDGE" | grep -qE "^(${POD_CIDR%.*}|${SERVICE_CIDR%%.*}\.)"; then
        problems+=("a route of this machine overlaps $POD_CIDR or $SERVICE_CIDR (VT_POD_CIDR, VT_SERVICE_CIDR move them)")
    fi
    for port in "$ETCD_PORT" $((ETCD_PORT + 1)) 10257 10259 10248 10256 10249; do
        if ss -Hltn "sport = :$port" | grep -q . && ! alive etcd; then
            problems+=("port $port on this machine is taken (a Kubernetes or etcd already running here?)")
        fi
    done
    if [ ${#problems[@]} -gt 0 ]; then
        printf 'error: this machine cannot host the local cluster:\n' >&2
        printf '  - %s\n' "${problems[@]}" >&2
        exit 1
    fi
}

control_plane_up() {
    local pki=$PKI_DIR
    start etcd etcd --name visiontrack --data-dir "$CLUSTER_DIR/etcd" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
        --initial-cluster "visiontrack=http://127.0.0.1:$((ETCD_PORT + 1))" --listen-metrics-urls ""
    start kube-apiserver "$K8S_BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
        --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port 6443 \
        --service-cluster-ip-range "$SERVICE_CIDR" --allow-privileged=true --authorization-mode Node,RBAC \
        --enable-admission-plugins NodeRestriction --profiling=false \
        --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
        --client-ca-file "$pki/ca.crt" \
        --service-account-key-file "$pki/service-accounts.pub" \
        --service-account-signing-key-file "$pki/service-accounts.key" \
        --service-account-issuer https://kubernetes.default.svc.cluster.local \
        --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
        --kubelet-client-key "$pki/apiserver-kubelet-client.key" --kubelet-certificate-authority "$pki/ca.crt" \
        --kubelet-preferred-address-types InternalIP,Hostname \
        --requestheader-client-ca-file "$pki/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
        --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
        --requestheader-extra-headers-prefix X-Remote-Extra- \
        --proxy-client-cert-file "$pki/front-proxy-client.crt" --proxy-client-key-file "$pki/front-proxy-client.key" \
        --enable-aggregator-routing=true
    wait_for 120 "the API server ready" kubectl get --raw /readyz
    start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
        --kubeconfig "$CLUSTER_DIR/controller-manager.kubeconfig" \
        --authentication-kubeconfig "$CLUSTER_DIR/controller-manager.kubeconfig" \
        --authorization-kubeconfig "$CLUSTER_DIR/controller-manager.kubeconfig" \
        --bind-address 127.0.0.1 --leader-elect=false --profiling=false --use-service-account-credentials \
        --service-account-private-key-file "$pki/service-accounts.key" --root-ca-file "$pki/ca.crt" \
        --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
        --service-cluster-ip-range "$SERVICE_CIDR" --cluster-cidr "$POD_CIDR" --allocate-node-cidrs=false \
        --horizontal-pod-autoscaler-sync-period 5s
    start kube-scheduler "$K8S_BIN/kube-scheduler" --kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" \
        --authentication-kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" \
        --authorization-kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" \
        --bind-address 127.0.0.1 --leader-elect=false --profiling=false
}

node_up() {
    start containerd containerd --config "$ETC_DIR/containerd.toml"
    wait_for 60 "containerd's socket" test -S "$CONTAINERD_SOCK"
    "$LOCAL_DIR/images.sh" load-cluster
    # --containerd: where cAdvisor reads container statistics (the resource metrics behind HPAs).
    start kubelet "$K8S_BIN/kubelet" --config "$ETC_DIR/kubelet.yaml" --kubeconfig "$CLUSTER_DIR/kubelet.kubeconfig" \
        --root-dir "$CLUSTER_DIR/kubelet" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --v 1 \
        --containerd "$CONTAINERD_SOCK"
    start kube-proxy "$K8S_BIN/kube-proxy" --config "$ETC_DIR/kube-proxy.yaml"
    wait_for 180 "the node Ready" node_ready
}

node_ready() {
    kubectl get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' | grep -qx True
}

# Claims bind to pre-made hostPath volumes; a volume a deleted claim released is made afresh.
volumes_up() {
    local i name dir phase
    for i in $(seq 1 "$VOLUMES"); do
        name=local-$i
        dir=$CLUSTER_DIR/volumes/$name
        phase=$(kubectl get pv "$name" -o 'jsonpath={.status.phase}' 2>/dev/null || true)
        [ "$phase" = Bound ] || [ "$phase" = Available ] && continue
        [ -n "$phase" ] && kubectl delete pv "$name" --wait=true >/dev/null
        rm -rf "$dir"
        mkdir -p "$dir"
        chmod 0777 "$dir"
        kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: $name}
spec:
  capacity: {storage: 20Gi}
  accessModes: [ReadWriteOnce]
  storageClassName: local
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: $dir, type: Directory}
  nodeAffinity:
    required:
      nodeSelectorTerms:
        - matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [$NODE_NAME]}]
EOF
    done
}

addons_up() {
    kubectl apply -f "$LOCAL_DIR/manifests/storage.yaml" >/dev/null
    volumes_up
    kubectl -n kube-system create configmap kubelet-ca --from-file=ca.crt="$PKI_DIR/ca.crt" \
        --dry-run=client -o yaml | kubectl apply -f - >/dev/null
    local manifest
    for manifest in coredns network-policies metrics-server; do
        DNS_SERVICE_IP=$DNS_SERVICE_IP NETPOL_QUEUE=$NETPOL_QUEUE \
            envsubst '$DNS_SERVICE_IP $NETPOL_QUEUE' < "$LOCAL_DIR/manifests/$manifest.yaml" | kubectl apply -f - >/dev/null
    done
    kubectl -n kube-system rollout status daemonset/kube-network-policies --timeout 180s >/dev/null
    kubectl -n kube-system rollout status deployment/coredns --timeout 180s >/dev/null
    kubectl -n kube-system rollout status deployment/metrics-server --timeout 180s >/dev/null
}

# What the cluster runs (tools, then the images built from them); prepare adds what the tests install.
CLUSTER_TOOLS=(kubernetes coredns kube-network-policies metrics-server pause traefik)
CLUSTER_IMAGES=(cluster ingress)

# Two lanes side by side: the Go builds want the CPU, the Debian images mostly the disk and the network.
# The images made from the Go programs come last.
prepare() {
    local started=$SECONDS tools images
    _lane tools "$LOCAL_DIR/tools.sh" build &
    tools=$!
    _lane images sh -c "'$LOCAL_DIR/images.sh' bases && '$LOCAL_DIR/images.sh' thirdparty chart &&
                        '$LOCAL_DIR/images.sh' project '${IMAGE_TAG:-dev}'" &
    images=$!
    wait "$tools" || die "building the tools failed (above)"
    wait "$images" || die "building the images failed (above)"
    step "images from the tools" "$LOCAL_DIR/images.sh" thirdparty
    step_summary
    say "everything built in $((SECONDS - started)) s"
}

# _lane NAME CMD...: run CMD with NAME before each line of its output, and its time at the end.
_lane() {
    local name=$1 started=$SECONDS
    shift
    "$@" 2>&1 | sed -u "s/^/[$name] /"
    local status=${PIPESTATUS[0]}
    echo "[$name] done in $((SECONDS - started)) s (exit $status)"
    return "$status"
}

up() {
    local started=$SECONDS
    preflight
    step "tools (built once, cached)" "$LOCAL_DIR/tools.sh" build "${CLUSTER_TOOLS[@]}"
    step "images (built once, cached)" "$LOCAL_DIR/images.sh" thirdparty "${CLUSTER_IMAGES[@]}"
    K8S_BIN=$("$LOCAL_DIR/tools.sh" bin kubernetes)
    mkdir -p "$CLUSTER_DIR"
    record_host
    step "certificates" make_pki
    write_configs
    step "network" network_up
    step "control plane" control_plane_up
    step "node" node_up
    step "add-ons (DNS, policies, metrics, volumes)" addons_up
    step_summary
    say "cluster up in $((SECONDS - started)) s; kubectl: export KUBECONFIG=$KUBECONFIG_FILE"
}

# Pods are deleted through the API first, so the kubelet tears their networks down itself; whatever
# is left (the API gone, a stuck pod) is removed by hand below.
delete_pods() {
    alive kube-apiserver && alive kubelet || return 0
    stop kube-controller-manager 5
    kubectl delete pods --all --all-namespaces --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
    local deadline=$((SECONDS + 60))
    while ls /run/netns/cni-* >/dev/null 2>&1 && [ $SECONDS -lt $deadline ]; do sleep 1; done
}

# Containers containerd still runs (and their shims), killed before containerd stops.
kill_containers() {
    alive containerd || return 0
    local ctr="ctr --address $CONTAINERD_SOCK -n k8s.io" task
    for task in $($ctr tasks ls -q 2>/dev/null); do $ctr tasks kill -s SIGKILL "$task" >/dev/null 2>&1 || true; done
    sleep 1
    for task in $($ctr tasks ls -q 2>/dev/null); do $ctr tasks delete -f "$task" >/dev/null 2>&1 || true; done
    pkill -9 -f "containerd-shim.*-address $CONTAINERD_SOCK" 2>/dev/null || true
}

down() {
    if [ ! -d "$CLUSTER_DIR" ]; then
        say "no local cluster here ($CLUSTER_DIR does not exist)"
        return
    fi
    [ "$(id -u)" -eq 0 ] || die "stopping the local cluster needs root, as starting it did"
    K8S_BIN=$("$LOCAL_DIR/tools.sh" bin kubernetes)
    delete_pods
    local i
    for ((i = ${#PROCESSES[@]} - 1; i >= 0; i--)); do
        [ "${PROCESSES[i]}" = containerd ] && kill_containers
        stop "${PROCESSES[i]}"
    done
    [ -x "$K8S_BIN/kube-proxy" ] && "$K8S_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
    unmount_cluster
    network_down
    remove_cluster_chains
    remove_new_tables
    remove_pod_cgroups
    restore_host
    find "$CLUSTER_DIR" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} +
    say "local cluster removed (its logs stay in $CLUSTER_DIR/logs)"
}

status() {
    local name
    for name in "${PROCESSES[@]}"; do
        printf '  %-24s %s\n' "$name" "$(alive "$name" && echo running || echo stopped)"
    done
    if alive kube-apiserver; then
        K8S_BIN=$("$LOCAL_DIR/tools.sh" bin kubernetes)
        kubectl get nodes 2>/dev/null || true
    fi
}

case ${1:-} in
deps) deps ;;
prepare) prepare ;;
up) up ;;
down) down ;;
status) status ;;
host-state) host_state ;;
*) die "usage: cluster.sh deps | prepare | up | down | status | host-state" ;;
esac
