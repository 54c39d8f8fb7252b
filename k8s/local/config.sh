# Configuration files of containerd, the CNI plugins, the kubelet and kube-proxy, written under
# $CLUSTER_DIR/etc from the addresses in lib.sh. Sourced by cluster.sh.

ETC_DIR="$CLUSTER_DIR/etc"

write_configs() {
    mkdir -p "$ETC_DIR/cni"
    _containerd_config | _write_if_changed "$ETC_DIR/containerd.toml"
    _cni_config | _write_if_changed "$ETC_DIR/cni/10-visiontrack.conflist"
    _kubelet_config | _write_if_changed "$ETC_DIR/kubelet.yaml"
    _kube_proxy_config | _write_if_changed "$ETC_DIR/kube-proxy.yaml"
}

# A file rewritten with the same content still counts as changed for kube-proxy, which exits when its
# configuration file is written to: on a running cluster, `up` must leave unchanged files alone.
_write_if_changed() {
    local path=$1 new
    new=$(cat)
    [ -f "$path" ] && [ "$(cat "$path")" = "$new" ] && return
    printf '%s\n' "$new" > "$path"
}

# A private containerd: its own store, state and socket, so it never meets another containerd here.
# Images are never pulled (the cluster's images are imported), and processes keep the OOM score they
# are given (raising it needs CAP_SYS_RESOURCE).
_containerd_config() {
    cat <<EOF
version = 2
root = "$CLUSTER_DIR/containerd/root"
state = "$CLUSTER_DIR/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10.1"
  enable_selinux = false
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$ETC_DIR/cni"
EOF
}

# Pods on the cluster's bridge, addresses from POD_CIDR, no masquerading (pods have no egress anyway).
_cni_config() {
    cat <<EOF
{
  "cniVersion": "1.0.0",
  "name": "visiontrack",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$CLUSTER_DIR/cni-ipam",
              "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

# cgroupfs and cgroup v1 allowed (kubelet 1.34 is the last to allow v1); pods get the cluster's DNS
# only (no host resolv.conf); healthz on loopback, the API port on the bridge.
_kubelet_config() {
    cat <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI_DIR/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $PKI_DIR/kubelet-serving.crt
tlsPrivateKeyFile: $PKI_DIR/kubelet-serving.key
cgroupDriver: cgroupfs
failCgroupV1: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
clusterDomain: cluster.local
clusterDNS: [$DNS_SERVICE_IP]
resolvConf: ""
failSwapOn: false
makeIPTablesUtilChains: true
podLogsDir: $CLUSTER_DIR/pod-logs
evictionHard: {"memory.available": "200Mi", "nodefs.available": "5%", "imagefs.available": "5%"}
imageGCHighThresholdPercent: 95
imageGCLowThresholdPercent: 90
serializeImagePulls: false
EOF
}

# iptables mode (no IPVS needed); NodePorts only on the bridge; conntrack sysctls left alone.
_kube_proxy_config() {
    cat <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $CLUSTER_DIR/kube-proxy.kubeconfig}
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$NODE_IP/32"]
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
}
