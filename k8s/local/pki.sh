# The cluster's own certificates and kubeconfigs (openssl), made once per cluster under $CLUSTER_DIR/pki.
# Sourced by cluster.sh. One CA signs every component's certificate; a second one (front-proxy) signs
# the apiserver's client certificate for aggregated APIs (metrics-server).

PKI_DIR="$CLUSTER_DIR/pki"

_key() { [ -f "$1" ] || openssl genrsa -out "$1" 2048 2>/dev/null; }

_ca() { # name common-name
    _key "$PKI_DIR/$1.key"
    [ -f "$PKI_DIR/$1.crt" ] || openssl req -x509 -new -key "$PKI_DIR/$1.key" -days 365 -subj "/CN=$2" \
        -out "$PKI_DIR/$1.crt"
}

# _cert NAME CA CN [ORG] [SANS]: a certificate signed by CA; with SANS it serves TLS too.
_cert() {
    local name=$1 ca=$2 cn=$3 org=${4:-} sans=${5:-} ext
    [ -f "$PKI_DIR/$name.crt" ] && return
    _key "$PKI_DIR/$name.key"
    ext="$PKI_DIR/$name.ext"
    {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        if [ -n "$sans" ]; then
            echo "extendedKeyUsage=serverAuth,clientAuth"
            echo "subjectAltName=$sans"
        else
            echo "extendedKeyUsage=clientAuth"
        fi
    } > "$ext"
    openssl req -new -key "$PKI_DIR/$name.key" -subj "/CN=$cn${org:+/O=$org}" 2>/dev/null |
        openssl x509 -req -CA "$PKI_DIR/$ca.crt" -CAkey "$PKI_DIR/$ca.key" -CAcreateserial -days 365 \
            -extfile "$ext" -out "$PKI_DIR/$name.crt" 2>/dev/null
    rm -f "$ext"
}

_kubeconfig() { # user certificate-name
    cat > "$CLUSTER_DIR/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: visiontrack-local
  cluster:
    server: https://$NODE_IP:6443
    certificate-authority-data: $(base64 -w0 "$PKI_DIR/ca.crt")
users:
- name: $1
  user:
    client-certificate-data: $(base64 -w0 "$PKI_DIR/$2.crt")
    client-key-data: $(base64 -w0 "$PKI_DIR/$2.key")
contexts:
- name: visiontrack-local
  context: {cluster: visiontrack-local, user: $1}
current-context: visiontrack-local
EOF
}

make_pki() {
    mkdir -p "$PKI_DIR"
    chmod 700 "$PKI_DIR"
    _ca ca visiontrack-local-ca
    _ca front-proxy-ca visiontrack-local-front-proxy-ca
    _cert apiserver ca kube-apiserver "" \
        "IP:$NODE_IP,IP:127.0.0.1,IP:$API_SERVICE_IP,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost"
    _cert apiserver-kubelet-client ca kube-apiserver-kubelet-client system:masters
    _cert front-proxy-client front-proxy-ca front-proxy-client
    _cert admin ca kubernetes-admin system:masters
    _cert controller-manager ca system:kube-controller-manager
    _cert scheduler ca system:kube-scheduler
    _cert kubelet ca "system:node:$NODE_NAME" system:nodes
    _cert kubelet-serving ca "system:node:$NODE_NAME" system:nodes "IP:$NODE_IP,DNS:$NODE_NAME"
    _cert kube-proxy ca system:kube-proxy
    _key "$PKI_DIR/service-accounts.key"
    [ -f "$PKI_DIR/service-accounts.pub" ] ||
        openssl rsa -in "$PKI_DIR/service-accounts.key" -pubout -out "$PKI_DIR/service-accounts.pub" 2>/dev/null
    local user
    for user in admin controller-manager scheduler kubelet kube-proxy; do _kubeconfig "$user" "$user"; done
    cp "$CLUSTER_DIR/admin.kubeconfig" "$KUBECONFIG_FILE"
}
