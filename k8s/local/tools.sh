#!/usr/bin/env bash
# The programs the local cluster runs, built with Go from the module proxy, once, into the cache.
#   tools.sh build [TOOL...]   build what is missing (default: every tool)
#   tools.sh bin TOOL          print the folder holding TOOL's programs
#   tools.sh list              name, version and whether it is built, one tool a line
# Each tool is a small wrapper module under tools/<name> (go.mod and go.sum pin every dependency);
# its programs land in $VT_CACHE/tools/<name>-<version>/. A cold build of everything takes about
# 25 minutes on two cores (Kubernetes alone 10); afterwards nothing is rebuilt.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

K8S_VERSION=v1.34.4
declare -A VERSION=(
    [kubernetes]=$K8S_VERSION
    [coredns]=v1.14.7
    [traefik]=v3.6.0
    [kube-network-policies]=v0.8.0
    [metrics-server]=v0.8.0
    [prometheus-operator]=v0.93.1
    [prometheus]=v3.14.0
    [alertmanager]=v0.34.0
    [pause]=v3.10.1
)
declare -A PROGRAMS=(
    [kubernetes]="k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
                  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet
                  k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl"
    [coredns]=github.com/coredns/coredns
    [traefik]=github.com/traefik/traefik/v3/cmd/traefik
    [kube-network-policies]="sigs.k8s.io/kube-network-policies/cmd:kube-network-policies"
    [metrics-server]=sigs.k8s.io/metrics-server/cmd/metrics-server
    [prometheus-operator]="github.com/prometheus-operator/prometheus-operator/cmd/operator
                           github.com/prometheus-operator/prometheus-operator/cmd/prometheus-config-reloader"
    [prometheus]=github.com/prometheus/prometheus/cmd/prometheus
    [alertmanager]=github.com/prometheus/alertmanager/cmd/alertmanager
    [pause]=".:pause"
)
# Modules whose code embeds a web UI built with Node, which their published module lacks: they are built
# from a copy with a placeholder page in the UI's folder (module@folder). Their APIs are whole.
declare -A UI_DIR=(
    [alertmanager]=github.com/prometheus/alertmanager@ui/app/dist
)
# Build order: the longest first, so a partial cache holds what costs most.
ALL_TOOLS=(kubernetes traefik coredns prometheus-operator prometheus alertmanager metrics-server
           kube-network-policies pause)

# Version strings the programs report (/version, buildinfo): helm checks the cluster's kubeVersion.
ldflags() {
    local tool=$1 v=${VERSION[$1]} flags="-s -w" p
    case $tool in
    kubernetes)
        local minor=${v#v1.}
        minor=${minor%%.*}
        for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
            flags+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
        done ;;
    traefik) flags+=" -X github.com/traefik/traefik/v3/pkg/version.Version=$v" ;;
    metrics-server) flags+=" -X k8s.io/client-go/pkg/version.gitVersion=$v" ;;
    prometheus | alertmanager | prometheus-operator)
        flags+=" -X github.com/prometheus/common/version.Version=${v#v}" ;;
    esac
    echo "$flags"
}

bin_dir() { echo "$TOOLS_CACHE/$1-${VERSION[$1]}"; }

# The go flags that build TOOL from a copy of its module with a placeholder UI page (see UI_DIR): a
# replace in a copy of the wrapper's go.mod points at the copy. Run in the tool's module folder.
placeholder_ui_flags() {
    local tool=$1 module=${UI_DIR[$1]%@*} folder=${UI_DIR[$1]#*@} copy source
    copy="$TOOLS_CACHE/src/$tool-${VERSION[$tool]}"
    rm -rf "$copy" "$copy.mod"
    mkdir -p "$copy.mod"
    # Downloaded first: on a cold module cache `go list -m` knows the module but has no folder for it.
    go mod download "$module"
    source=$(go list -m -f '{{.Dir}}' "$module")
    [ -n "$source" ] || die "go mod download $module left no source folder"
    cp -r "$source" "$copy"
    chmod -R u+w "$copy"
    mkdir -p "$copy/$folder"
    echo "<!doctype html><title>$tool</title><p>Built without its web UI; the API is whole." \
        > "$copy/$folder/index.html"
    cp go.mod go.sum "$copy.mod/"
    go mod edit -modfile "$copy.mod/go.mod" -replace "$module=$copy"
    echo "-modfile=$copy.mod/go.mod"
}

program_name() { # package[:name] -> name
    local spec=$1
    if [[ $spec == *:* ]]; then echo "${spec#*:}"; else basename "$spec"; fi
}

is_built() {
    local tool=$1 spec
    for spec in ${PROGRAMS[$tool]}; do
        [ -x "$(bin_dir "$tool")/$(program_name "$spec")" ] || return 1
    done
}

build_tool() {
    local tool=$1 out spec pkg name lock started=$SECONDS
    [ -n "${VERSION[$tool]:-}" ] || die "unknown tool '$tool' (known: ${ALL_TOOLS[*]})"
    # One build of a tool at a time: a second caller waits, then finds it built.
    mkdir -p "$TOOLS_CACHE"
    exec {lock}> "$TOOLS_CACHE/.$tool.lock"
    flock "$lock"
    if is_built "$tool"; then
        say "$tool ${VERSION[$tool]}: built"
        exec {lock}>&-
        return
    fi
    command -v go >/dev/null || die "go is needed to build $tool (Go 1.24 or newer)"
    out=$(bin_dir "$tool")
    mkdir -p "$out.partial"
    for spec in ${PROGRAMS[$tool]}; do
        pkg=${spec%%:*}
        name=$(program_name "$spec")
        say "building $tool ${VERSION[$tool]}: $name"
        (cd "$LOCAL_DIR/tools/$tool" &&
            flags=() && { [ -z "${UI_DIR[$tool]:-}" ] || flags=("$(placeholder_ui_flags "$tool")"); } &&
            CGO_ENABLED=0 nice -n 10 go build "${flags[@]}" -trimpath -ldflags "$(ldflags "$tool")" \
                -o "$out.partial/$name" "$pkg")
    done
    rm -rf "$out"
    mv "$out.partial" "$out"
    say "$tool ${VERSION[$tool]} built in $((SECONDS - started)) s"
    exec {lock}>&-
}

main() {
    local command=${1:-build}
    shift || true
    case $command in
    build)
        local tool
        for tool in "${@:-${ALL_TOOLS[@]}}"; do build_tool "$tool"; done ;;
    bin)
        [ -n "${VERSION[${1:-}]:-}" ] || die "usage: tools.sh bin TOOL (one of: ${ALL_TOOLS[*]})"
        bin_dir "$1" ;;
    list)
        local tool
        for tool in "${ALL_TOOLS[@]}"; do
            printf '%-24s %-10s %s\n' "$tool" "${VERSION[$tool]}" "$(is_built "$tool" && echo built || echo missing)"
        done ;;
    *) die "usage: tools.sh build [TOOL...] | bin TOOL | list" ;;
    esac
}

main "$@"
