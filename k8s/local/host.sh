# What the cluster changes on the host, and how `down` undoes it. Sourced by cluster.sh.
# Before the first change, `record_host` writes what it will touch as it was (sysctls, folders,
# iptables chains) to $HOST_BEFORE; `restore_host` puts back exactly that, so `down` leaves the
# machine as `up` found it.

HOST_BEFORE="$CLUSTER_DIR/host-before"
NETPOL_CHAIN=VT-NETPOL

# Sysctls the cluster sets: ours (forwarding, bridged traffic through iptables) and those the kubelet
# and kube-proxy set for themselves.
SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
         net.ipv4.conf.all.route_localnet vm.overcommit_memory vm.panic_on_oom kernel.panic
         kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
# Host folders the kubelet, containerd and the CNI plugins create whatever their configuration says.
HOST_DIRS=(/var/log/pods /var/log/containers /var/lib/cni /run/netns /run/containerd /var/lib/kubelet
           /etc/cni /opt/cni)

record_host() {
    [ -f "$HOST_BEFORE" ] && return
    local key dir
    {
        for key in "${SYSCTLS[@]}"; do
            echo "sysctl $key $(sysctl -n "$key" 2>/dev/null || echo absent)"
        done
        for dir in "${HOST_DIRS[@]}"; do [ -e "$dir" ] && echo "dir $dir"; done
        _cluster_chains | sed 's/^/chain /'
        _iptables_tables | sed 's/^/table /'
    } > "$HOST_BEFORE.partial"
    mv "$HOST_BEFORE.partial" "$HOST_BEFORE"
}

# The iptables tables that exist, as "iptables|table" (iptables-save lists only those).
_iptables_tables() {
    local ipt
    for ipt in iptables ip6tables; do
        $ipt-save 2>/dev/null | awk -v p="$ipt|" '/^\*/ {print p substr($1, 2)}'
    done
}

# Tables the cluster's iptables calls created, deleted again once they hold no rule. Only with the
# nftables backend of iptables (tables are then nftables tables, and `nft` can delete them).
remove_new_tables() {
    command -v nft >/dev/null && iptables -V 2>/dev/null | grep -q nf_tables || return 0
    local entry ipt table family
    for entry in $(_iptables_tables); do
        grep -qxF "table $entry" "$HOST_BEFORE" 2>/dev/null && continue
        IFS='|' read -r ipt table <<<"$entry"
        $ipt -t "$table" -S | grep -q '^-[AN] ' && continue
        family=ip
        [ "$ipt" = ip6tables ] && family=ip6
        nft delete table "$family" "$table" 2>/dev/null || true
    done
}

# Chains whose names Kubernetes, the CNI plugins or this script use, as "iptables|table|chain".
_cluster_chains() {
    local ipt table
    for ipt in iptables ip6tables; do
        for table in filter nat mangle; do
            $ipt -t "$table" -S 2>/dev/null | awk -v p="$ipt|$table|" '/^-N (KUBE|CNI|VT-)/ {print p $2}'
        done
    done
}

network_up() {
    local prefix=${POD_CIDR#*/}
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge
        ip addr add "$NODE_IP/$prefix" dev "$BRIDGE"
    fi
    ip link set "$BRIDGE" up
    # Service addresses are routed to the bridge, so a Service IP never leaves through another interface.
    ip route replace "$SERVICE_CIDR" dev "$BRIDGE" src "$NODE_IP"
    # Pods reach each other and this host, never another machine.
    iptables -C FORWARD -i "$BRIDGE" ! -o "$BRIDGE" -j DROP 2>/dev/null ||
        iptables -I FORWARD 1 -i "$BRIDGE" ! -o "$BRIDGE" -j DROP
    _kernel_has_nft_queue || _netpol_steering_up
    sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
}

# NetworkPolicies are enforced by kube-network-policies, which decides on the first packet of each
# new connection that it reads from an NFQUEUE. It queues them with nftables' `queue` statement, which
# needs CONFIG_NFT_QUEUE; where the kernel lacks it, these iptables rules queue the same packets (new
# connections between pods, after Service NAT) with the NFQUEUE target instead. Connections the host's
# root processes open (the kubelet's probes) are not queued, as in the engine's own rules.
_netpol_steering_up() {
    iptables -t mangle -N "$NETPOL_CHAIN" 2>/dev/null || iptables -t mangle -F "$NETPOL_CHAIN"
    iptables -t mangle -A "$NETPOL_CHAIN" -m owner --uid-owner 0 -j RETURN
    iptables -t mangle -A "$NETPOL_CHAIN" -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
    iptables -t mangle -A "$NETPOL_CHAIN" -s "$POD_CIDR" -j NFQUEUE --queue-num "$NETPOL_QUEUE"
    iptables -t mangle -A "$NETPOL_CHAIN" -d "$POD_CIDR" -j NFQUEUE --queue-num "$NETPOL_QUEUE"
    iptables -t mangle -C POSTROUTING -j "$NETPOL_CHAIN" 2>/dev/null ||
        iptables -t mangle -A POSTROUTING -j "$NETPOL_CHAIN"
}

_kernel_has_nft_queue() {
    zcat /proc/config.gz 2>/dev/null | grep -q '^CONFIG_NFT_QUEUE=[ym]' ||
        grep -qw nft_queue /proc/modules 2>/dev/null
}

network_down() {
    iptables -t mangle -D POSTROUTING -j "$NETPOL_CHAIN" 2>/dev/null || true
    iptables -t mangle -F "$NETPOL_CHAIN" 2>/dev/null || true
    iptables -t mangle -X "$NETPOL_CHAIN" 2>/dev/null || true
    iptables -D FORWARD -i "$BRIDGE" ! -o "$BRIDGE" -j DROP 2>/dev/null || true
    local veth
    for veth in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
        ip link del "$veth" 2>/dev/null || true
    done
    ip route del "$SERVICE_CIDR" dev "$BRIDGE" 2>/dev/null || true
    ip link del "$BRIDGE" 2>/dev/null || true
}

# Chains Kubernetes or the CNI plugins made that were not there before `up`, with the rules jumping to them.
remove_cluster_chains() {
    local entry ipt table chain
    for entry in $(_cluster_chains); do
        grep -qxF "chain $entry" "$HOST_BEFORE" 2>/dev/null && continue
        IFS='|' read -r ipt table chain <<<"$entry"
        $ipt -t "$table" -S | awk -v c="$chain" '$1 == "-A" && $0 ~ ("-j " c "( |$)") {sub(/^-A/, "-D"); print}' |
            while read -r rule; do eval "$ipt -t $table $rule" 2>/dev/null || true; done
        $ipt -t "$table" -F "$chain" 2>/dev/null || true
    done
    for entry in $(_cluster_chains); do
        grep -qxF "chain $entry" "$HOST_BEFORE" 2>/dev/null && continue
        IFS='|' read -r ipt table chain <<<"$entry"
        $ipt -t "$table" -X "$chain" 2>/dev/null || true
    done
}

# Mounts under the cluster's folders and the network namespaces containerd made.
unmount_cluster() {
    local mount
    for mount in $(awk -v d="$CLUSTER_DIR" '$2 == d || index($2, d "/") == 1 || $2 ~ "^/run/netns/cni-" ||
                                             $2 ~ "^/run/containerd/" {print $2}' /proc/mounts | sort -r); do
        umount "$mount" 2>/dev/null || umount -l "$mount" 2>/dev/null || true
    done
    rm -f /run/netns/cni-* 2>/dev/null || true
    # containerd makes /run/netns a mount point of its own; gone with the folder when it made that.
    if ! grep -qxF "dir /run/netns" "$HOST_BEFORE" 2>/dev/null && mountpoint -q /run/netns; then
        umount /run/netns 2>/dev/null || umount -l /run/netns 2>/dev/null || true
    fi
}

# The kubepods cgroups the kubelet made in every v1 hierarchy (or the one v2 tree).
remove_pod_cgroups() {
    local dir
    for dir in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods /sys/fs/cgroup/kubepods.slice; do
        [ -d "$dir" ] && find "$dir" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
    return 0
}

restore_host() {
    [ -f "$HOST_BEFORE" ] || return 0
    local kind key value dir
    while read -r kind key value; do
        [ "$kind" = sysctl ] && [ "$value" != absent ] || continue
        [ "$(sysctl -n "$key" 2>/dev/null)" = "$value" ] || sysctl -qw "$key=$value" || warn "could not restore $key"
    done < "$HOST_BEFORE"
    for dir in "${HOST_DIRS[@]}"; do
        grep -qxF "dir $dir" "$HOST_BEFORE" || rm -rf "$dir" || warn "could not remove $dir"
    done
}

# What `down` must leave as `up` found it, printed for comparison: interfaces, routes, iptables rules
# (without counters), mounts, the sysctls above, the folders above, and the cluster's kind of processes.
host_state() {
    local key dir
    echo "## interfaces"; ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | sort
    echo "## routes"; ip route show; ip -6 route show
    echo "## iptables"; iptables-save | { grep -v '^#' || true; } | sed -E 's/\[[0-9]+:[0-9]+\]//'
    echo "## ip6tables"; ip6tables-save | { grep -v '^#' || true; } | sed -E 's/\[[0-9]+:[0-9]+\]//'
    echo "## mounts"; awk '{print $2}' /proc/mounts | sort
    echo "## sysctls"; for key in "${SYSCTLS[@]}"; do echo "$key=$(sysctl -n "$key" 2>/dev/null)"; done
    echo "## folders"; for dir in "${HOST_DIRS[@]}"; do [ -e "$dir" ] && echo "$dir"; done
    echo "## processes"
    # grep finds nothing on a quiet machine; that is an answer, not a failure.
    ps -eo comm= | { grep -E '^(etcd|kube|containerd|runc|coredns|traefik|netpol|pause|postgres|redis)' || true; } |
        sort | uniq -c
    return 0
}
