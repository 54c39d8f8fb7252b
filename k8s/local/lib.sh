# Shared by the scripts of k8s/local: where things live, the cluster's addresses, logging and timing.
# Sourced, not run. Every path can be moved with the variable that names it.

LOCAL_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$LOCAL_DIR/../.." && pwd)"

# Built once and kept between clusters: Go tools, the Go caches, container images.
VT_CACHE="${VT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/visiontrack}"
TOOLS_CACHE="$VT_CACHE/tools"
# One cluster's state: certificates, kubeconfigs, logs, pids, etcd's data, containerd's store.
CLUSTER_DIR="${CLUSTER_DIR:-$REPO_ROOT/run/cluster}"

# The cluster's network. The bridge is created by `cluster.sh up` and removed by `down`; every control
# plane listener binds to its address (or to loopback), so nothing is reachable from outside the machine.
BRIDGE="${VT_CLUSTER_BRIDGE:-vt-cni0}"
POD_CIDR="${VT_POD_CIDR:-10.244.0.0/24}"
NODE_IP="${VT_NODE_IP:-10.244.0.1}"
SERVICE_CIDR="${VT_SERVICE_CIDR:-10.96.0.0/16}"
API_SERVICE_IP="${VT_API_SERVICE_IP:-10.96.0.1}"
DNS_SERVICE_IP="${VT_DNS_SERVICE_IP:-10.96.0.10}"
NODE_NAME="${VT_NODE_NAME:-visiontrack}"
ETCD_PORT="${VT_ETCD_PORT:-12379}"
NETPOL_QUEUE=100
# The cluster's own containerd (its socket; images are imported into its "k8s.io" namespace).
CONTAINERD_SOCK="$CLUSTER_DIR/containerd/containerd.sock"
KUBECONFIG_FILE="$CLUSTER_DIR/kubeconfig"

export GOMODCACHE="${GOMODCACHE:-$VT_CACHE/go/mod}"
export GOCACHE="${GOCACHE:-$VT_CACHE/go/build}"
export GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:-}"

# podman/buildah: images are kept in the cache, not in /var/lib/containers; container ulimits stay
# below the host's (a machine without CAP_SYS_RESOURCE cannot raise them).
export CONTAINERS_CONF="$LOCAL_DIR/config/containers.conf"
export CONTAINERS_STORAGE_CONF="$VT_CACHE/containers/storage.conf"

say() { echo "==> $*"; }
warn() { echo "warning: $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

# step NAME CMD...: run CMD, then print how long it took; the lines are collected for the summary.
STEP_TIMES=()
step() {
    local name=$1 started=$SECONDS
    shift
    say "$name"
    "$@"
    STEP_TIMES+=("$(printf '%-28s %5d s' "$name" $((SECONDS - started)))")
}
step_summary() {
    local line
    echo "---- time per stage"
    for line in "${STEP_TIMES[@]}"; do echo "  $line"; done
}

# wait_for SECONDS WHAT CMD...: retry CMD every half second until it succeeds or SECONDS pass.
wait_for() {
    local timeout=$1 what=$2 deadline=$((SECONDS + $1))
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || die "$what: not after ${timeout} s"
        sleep 0.5
    done
}
