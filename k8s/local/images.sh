#!/usr/bin/env bash
# Every container image the local cluster runs, built without Docker or a registry: stand-ins made from
# Debian packages (mmdebstrap) and from the Go programs of tools.sh, under the exact names the Dockerfiles
# and charts use, plus VisionTrack's own four images from their unchanged Dockerfiles (buildah).
#   images.sh bases                  the base images the Dockerfiles build FROM (python, rust, distroless)
#   images.sh thirdparty [WHAT...]   the images the charts and the cluster run; WHAT: a group, chart (postgres,
#                                    redis, curl, the two exporters), cluster (pause, coredns, the NetworkPolicy
#                                    engine, metrics-server), ingress (traefik), monitoring (Prometheus
#                                    Operator, config reloader, Prometheus, Alertmanager), or single keys
#                                    (`images.sh list` shows them); default: every group
#   images.sh project [TAG]          visiontrack/{ingestor,registry,query,aggregator}:TAG (default $IMAGE_TAG, dev)
#   images.sh retag FROM TO          tag the four project images FROM as TO as well
#   images.sh load [IMAGE...]        import into the cluster's containerd ($CONTAINERD_SOCK, namespace k8s.io):
#                                    IMAGE is a name, a key or a group; default: every built non-base image.
#                                    Stand-ins containerd already holds are skipped; project images never are.
#   images.sh load-cluster           load every built stand-in (the cluster group must be built)
#   images.sh remove WHAT...         remove images (names, keys or groups), to build them again
#   images.sh list                   every image, whether it is built, and what it holds
#   images.sh names [WHAT...]        image names only, one a line (for tests and scripts)
# Images live in podman/buildah storage under $VT_CACHE/containers (not /var/lib/containers), logs in its
# logs/. A built image is kept and never rebuilt (`images.sh remove` it first); project images are rebuilt
# each time, cheaply, from buildah's layer cache. Needs root, mmdebstrap, buildah, podman; the cluster,
# ingress and monitoring images build their Go programs with tools.sh when missing (minutes each).
# The stand-ins are not the upstream images: see docs/kubernetes.md. A real cluster pulls the real ones.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SELF="$LOCAL_DIR/images.sh"
TOOLS_SH="$LOCAL_DIR/tools.sh"
IMAGE_TAG="${IMAGE_TAG:-dev}"
SUITE=bookworm
CONTAINERS_DIR="$VT_CACHE/containers"
LOG_DIR="$CONTAINERS_DIR/logs"
PATH_DEFAULT=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# --- the images -----------------------------------------------------------------------------------
# key, group and name of every image, in build order. Groups: base (FROM of the Dockerfiles), chart (run
# by the VisionTrack chart), cluster (run by the node and its add-ons), ingress (the Traefik chart),
# monitoring (kube-prometheus-stack), project.
IMAGE_TABLE="
python                base        docker.io/library/python:3.11.14-slim-bookworm
rust                  base        docker.io/library/rust:1.95.0-slim-bookworm
distroless            base        gcr.io/distroless/cc-debian12:nonroot
postgres              chart       docker.io/library/postgres:15.15-bookworm
redis                 chart       docker.io/library/redis:7.0.15-bookworm
curl                  chart       docker.io/curlimages/curl:8.17.0
redis-exporter        chart       quay.io/oliver006/redis_exporter:v1.66.0
postgres-exporter     chart       quay.io/prometheuscommunity/postgres-exporter:v0.16.0
pause                 cluster     registry.k8s.io/pause:3.10.1
coredns               cluster     registry.k8s.io/coredns/coredns:v1.14.7
kube-network-policies cluster     registry.k8s.io/networking/kube-network-policies:v0.8.0
traefik               ingress     docker.io/library/traefik:v3.6.0
prometheus-operator   monitoring  quay.io/prometheus-operator/prometheus-operator:v0.93.1
config-reloader       monitoring  quay.io/prometheus-operator/prometheus-config-reloader:v0.93.1
prometheus            monitoring  quay.io/prometheus/prometheus:v3.14.0-distroless
alertmanager          monitoring  quay.io/prometheus/alertmanager:v0.34.0
metrics-server        cluster     registry.k8s.io/metrics-server/metrics-server:v0.8.0
ingestor              project     docker.io/visiontrack/ingestor:@TAG@
registry              project     docker.io/visiontrack/registry:@TAG@
query                 project     docker.io/visiontrack/query:@TAG@
aggregator            project     docker.io/visiontrack/aggregator:@TAG@
"
THIRDPARTY_GROUPS=(chart cluster ingress monitoring)
PROJECT_PARTS=(ingestor registry query aggregator)
declare -A NAME=() GROUP=()
KEYS=()
read_table() {
    local key group name
    while read -r key group name; do
        [ -n "$key" ] || continue
        KEYS+=("$key")
        GROUP[$key]=$group
        NAME[$key]=${name//@TAG@/$IMAGE_TAG}
    done <<<"$IMAGE_TABLE"
}
read_table

# select_keys WHAT...: the keys of groups and single keys, in table order, each once, into SELECTED.
SELECTED=()
select_keys() {
    local what key found
    declare -A wanted=()
    for what in "$@"; do
        found=0
        for key in "${KEYS[@]}"; do
            if [ "$key" = "$what" ] || [ "${GROUP[$key]}" = "$what" ]; then wanted[$key]=1; found=1; fi
        done
        [ $found = 1 ] || die "unknown image or group '$what' (groups: base ${THIRDPARTY_GROUPS[*]} project; keys: images.sh list)"
    done
    SELECTED=()
    for key in "${KEYS[@]}"; do
        [ -z "${wanted[$key]:-}" ] || SELECTED+=("$key")
    done
}

# ensure WHAT...: every image of the groups and keys built (ensure_image).
ensure() {
    select_keys "$@"
    ensure_image "${SELECTED[@]}"
}

# Image names as the kubelet and containerd spell them: visiontrack/x:dev is docker.io/visiontrack/x:dev,
# traefik:v3.6.0 is docker.io/library/traefik:v3.6.0.
normalize() {
    local ref=$1 first=${1%%/*}
    if [[ $ref != */* ]]; then
        ref=docker.io/library/$ref
    elif [[ $first != *.* && $first != *:* && $first != localhost ]]; then
        ref=docker.io/$ref
    elif [[ $first == docker.io && ${ref#*/} != */* ]]; then
        ref=docker.io/library/${ref#*/}
    fi
    [[ ${ref##*/} == *:* || $ref == *@* ]] || ref=$ref:latest
    echo "$ref"
}

# --- podman/buildah storage under the cache -----------------------------------------------------------
write_storage_conf() {
    local conf
    mkdir -p "$CONTAINERS_DIR/storage" "$CONTAINERS_DIR/run" "$CONTAINERS_DIR/tmp" "$LOG_DIR"
    conf=$(printf '%s\n' "# Written by k8s/local/images.sh: podman and buildah keep the local cluster's images here." \
        '[storage]' 'driver = "overlay"' "graphroot = \"$CONTAINERS_DIR/storage\"" "runroot = \"$CONTAINERS_DIR/run\"")
    [ "$(cat "$CONTAINERS_STORAGE_CONF" 2>/dev/null)" = "$conf" ] || echo "$conf" >"$CONTAINERS_STORAGE_CONF"
}

# podman's own state goes to the cache too, not /run/libpod.
podman() { command podman --tmpdir "$CONTAINERS_DIR/tmp" "$@"; }

image_exists() { buildah inspect --type image "$1" >/dev/null 2>&1; }

# --- building blocks ------------------------------------------------------------------------------
WORK=""
CONTAINERS=()
CONTAINER=""
cleanup() {
    local c
    for c in "${CONTAINERS[@]}"; do buildah rm "$c" >/dev/null 2>&1 || true; done
    [ -z "$WORK" ] || rm -rf "$WORK"
}
trap cleanup EXIT

# scratch FILE: FILE's path in this run's scratch folder, in SCRATCH (not in a subshell: the folder is
# made once and removed at exit).
SCRATCH=""
scratch() {
    [ -n "$WORK" ] || WORK=$(mkdir -p "$CONTAINERS_DIR" && mktemp -d "$CONTAINERS_DIR/work.XXXXXX")
    SCRATCH="$WORK/$1"
}

# logged LOG CMD...: run CMD with its output in LOG; on failure show the end of LOG.
logged() {
    local log=$1
    shift
    if ! "$@" >>"$log" 2>&1; then
        tail -n 40 "$log" >&2
        die "failed: ${*:1:4} ... (whole log: $log)"
    fi
}

# The archive URI apt uses for SUITE: deb822 .sources and one-line .list files in /etc/apt/sources.list.d/,
# then /etc/apt/sources.list. Empty when none lists it.
apt_uri() {
    local suite=$1 f
    {
        for f in /etc/apt/sources.list.d/*.sources; do
            [ -f "$f" ] || continue
            awk -v suite="$suite" '
                function flush() {
                    if (ok && uri != "" && types ~ /(^| )deb( |$)/) { print uri; done = 1; exit }
                    ok = 0; uri = ""; types = ""
                }
                /^[[:space:]]*$/ { flush(); next }
                /^Types:/ { types = $0; sub(/^Types:[[:space:]]*/, "", types) }
                /^URIs:/ { uri = $2 }
                /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) ok = 1 }
                END { if (!done) flush() }' "$f"
        done
        for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list; do
            [ -f "$f" ] || continue
            awk -v suite="$suite" '$1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) print $i
            }' "$f"
        done
    } | head -n 1
}

# The sources.list lines mmdebstrap installs from: DEBIAN_MIRROR (and DEBIAN_SECURITY_MIRROR) when set,
# otherwise the Debian archives apt uses (bookworm, bookworm-updates, bookworm-security).
MIRROR_SOURCES=()
mirror_sources() {
    local main uri suite
    [ ${#MIRROR_SOURCES[@]} -eq 0 ] || return 0
    if [ -n "${DEBIAN_MIRROR:-}" ]; then
        MIRROR_SOURCES=("deb $DEBIAN_MIRROR $SUITE main")
        [ -z "${DEBIAN_SECURITY_MIRROR:-}" ] || MIRROR_SOURCES+=("deb $DEBIAN_SECURITY_MIRROR $SUITE-security main")
        return 0
    fi
    main=$(apt_uri "$SUITE")
    [ -n "$main" ] || die "no Debian $SUITE archive in /etc/apt/sources.list.d/ or /etc/apt/sources.list: set DEBIAN_MIRROR"
    MIRROR_SOURCES=("deb $main $SUITE main")
    for suite in "$SUITE-updates" "$SUITE-security"; do
        uri=$(apt_uri "$suite")
        [ -z "$uri" ] || MIRROR_SOURCES+=("deb $uri $suite main")
    done
}

# debian_rootfs TARBALL VARIANT PACKAGES [mmdebstrap options...]: a Debian root file system as a tarball.
# minbase images leave out documentation, manuals and translations, as Debian's slim images do.
debian_rootfs() {
    local out=$1 variant=$2 packages=$3
    shift 3
    local -a slim=()
    [ "$variant" = extract ] || slim=(--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*')
    mirror_sources
    logged "$BUILD_LOG" nice -n 10 mmdebstrap --variant="$variant" --include="$packages" --aptopt='Acquire::Retries "3"' \
        "${slim[@]}" "$@" "$SUITE" "$out" "${MIRROR_SOURCES[@]}"
}

# deb_version TARBALL PACKAGE: the package's version in a root file system tarball.
deb_version() {
    local tar=$1 pkg=$2 v
    v=$(tar -xOf "$tar" ./var/lib/dpkg/status 2>/dev/null |
        awk -v p="$pkg" '$1 == "Package:" { cur = $2 } $1 == "Version:" && cur == p { print $2; exit }')
    # The extract variant records nothing in dpkg's status: the changelog names the (source) version.
    [ -n "$v" ] || v=$(tar -xOf "$tar" "./usr/share/doc/$pkg/changelog.Debian.gz" 2>/dev/null | gzip -dc 2>/dev/null |
        sed -n '1s/^[^ ]* (\([^)]*\)).*/\1/p')
    echo "${v:-unknown}"
}

# mmdebstrap hooks are shell commands run with the root directory as $1; hook FN ARGS... makes one that
# runs hook_FN ROOT ARGS... of this script.
hook() {
    local fn=$1
    shift
    printf '%q _hook %q "$1"' "$SELF" "$fn"
    [ $# -eq 0 ] || printf ' %q' "$@"
}

# new_container BASE: a working container FROM BASE (a local image or scratch), in $CONTAINER.
new_container() {
    CONTAINER=$(buildah from --pull=false --quiet "$1")
    CONTAINERS+=("$CONTAINER")
}

# container_from_rootfs TARBALL: a working container holding the tarball's files (owners and modes kept).
container_from_rootfs() {
    local mnt
    new_container scratch
    mnt=$(buildah mount "$CONTAINER")
    tar -C "$mnt" --numeric-owner --xattrs --xattrs-include='*' --exclude='./dev/*' -xpf "$1"
    buildah umount "$CONTAINER" >/dev/null
}

# in_mount FN ARGS...: run FN with the working container's root directory as its first argument.
in_mount() {
    local fn=$1 mnt
    shift
    mnt=$(buildah mount "$CONTAINER")
    "$fn" "$mnt" "$@"
    buildah umount "$CONTAINER" >/dev/null
}

# add_program SOURCE DEST: copy an executable into the working container, owned by root.
add_program() { buildah copy --quiet --chown 0:0 --chmod 0755 "$CONTAINER" "$1" "$2" >/dev/null; }

# finish_image KEY CONTENTS [buildah config options...]: label, configure and commit the working container
# as the image KEY names. CONTENTS (what the stand-in really holds) is kept in the label
# io.visiontrack.stand-in, which `images.sh list` shows.
finish_image() {
    local key=$1 contents=$2
    shift 2
    buildah config \
        --label "org.opencontainers.image.description=Local stand-in for ${NAME[$key]}, built by k8s/local/images.sh" \
        --label "io.visiontrack.stand-in=$contents" "$@" "$CONTAINER"
    buildah commit --quiet --rm "$CONTAINER" "${NAME[$key]}" >/dev/null
}

# tool_program TOOL PROGRAM: the path of a program tools.sh builds, building the tool first when missing.
tool_program() {
    local tool=$1 program=$2 dir
    dir=$("$TOOLS_SH" bin "$tool")
    if [ ! -x "$dir/$program" ]; then
        say "$tool is not built yet: building it with tools.sh (several minutes)" >&2
        "$TOOLS_SH" build "$tool" >&2
    fi
    [ -x "$dir/$program" ] || die "tools.sh build $tool did not produce $dir/$program"
    echo "$dir/$program"
}

# tool_version TOOL: the version tools.sh builds.
tool_version() { "$TOOLS_SH" list | awk -v t="$1" '$1 == t { print $2 }'; }

# check_tool_tag KEY TOOL: the image's tag must be the version tools.sh builds (v and a -suffix aside).
check_tool_tag() {
    local key=$1 tool=$2 tag=${NAME[$1]##*:} version
    tag=${tag%%-*}
    version=$(tool_version "$tool")
    [ "${tag#v}" = "${version#v}" ] || die "${NAME[$key]}: tools.sh builds $tool $version, not $tag; align the two"
}

# --- hooks run inside mmdebstrap (images.sh _hook NAME ROOT ARGS...) ---------------------------------

# The host's extra CA certificates, for images that run pip or cargo during a build: this machine's
# outbound TLS goes through an inspecting proxy that signs with its own CA. Without extra CAs, nothing.
hook_ca_certs() {
    local root=$1 crt copied=0
    for crt in /usr/local/share/ca-certificates/*.crt; do
        [ -f "$crt" ] || continue
        install -D -m 0644 "$crt" "$root/usr/local/share/ca-certificates/${crt##*/}"
        copied=1
    done
    [ "$copied" = 0 ] || chroot "$root" update-ca-certificates >/dev/null
}

# python, python3 and pip in /usr/local/bin as in the official image; pip may install (no PEP 668 marker).
hook_python_links() {
    local root=$1
    ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
    ln -sf /usr/bin/python3 "$root/usr/local/bin/python3"
    ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
    ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip3"
    rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
}

# The host's rustup toolchain at the official image's paths, its programs on PATH in /usr/local/cargo/bin.
hook_rust_toolchain() {
    local root=$1 source=$2 name=$3 dest program
    dest="$root/usr/local/rustup/toolchains/$name"
    mkdir -p "$dest" "$root/usr/local/cargo/bin"
    tar -C "$source" --exclude=./share/doc -cf - . | tar -C "$dest" -xf -
    for program in "$dest"/bin/*; do
        ln -s "../../rustup/toolchains/$name/bin/${program##*/}" "$root/usr/local/cargo/bin/${program##*/}"
    done
}

# Give USER and its group the id ID, as in the official images (the chart runs them as 999), and every
# file of theirs with them. (useradd cannot run in an essential hook: passwd is not installed yet.)
hook_renumber() {
    local root=$1 user=$2 id=$3 old_uid old_gid
    old_uid=$(chroot "$root" id -u "$user")
    old_gid=$(chroot "$root" id -g "$user")
    [ "$old_uid:$old_gid" != "$id:$id" ] || return 0
    chroot "$root" groupmod --gid "$id" "$user"
    chroot "$root" usermod --uid "$id" --gid "$id" "$user"
    find "$root" -xdev -uid "$old_uid" -exec chown -h "$id" {} +
    find "$root" -xdev -gid "$old_gid" -exec chgrp -h "$id" {} +
}

# Before postgresql-common is configured: no "main" cluster (the entrypoint creates PGDATA itself).
hook_no_main_cluster() {
    mkdir -p "$1/etc/postgresql-common"
    echo "create_main_cluster = false" >"$1/etc/postgresql-common/createcluster.conf"
}

# The entrypoint, the data and socket folders, and listen_addresses='*' in new clusters, as upstream.
hook_postgres() {
    local root=$1 major=$2
    install -m 0755 "$LOCAL_DIR/images/postgres-entrypoint.sh" "$root/usr/local/bin/docker-entrypoint.sh"
    sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '*'!" "$root/usr/share/postgresql/$major/postgresql.conf.sample"
    grep -q "^listen_addresses = '\*'" "$root/usr/share/postgresql/$major/postgresql.conf.sample"
    install -d -o 999 -g 999 -m 1777 "$root/var/lib/postgresql/data"
}

# The socket folder, made on the container's files: mmdebstrap empties /run at its end. (/var/run is a
# link to /run: work on /run, never through a link that would point into the host.)
postgres_socket_dir() { install -d -o 999 -g 999 -m 3777 "$1/run/postgresql"; }

hook_redis() { install -d -o 999 -g 999 -m 0755 "$1/data"; }

# curlimages/curl's user (curl_user 100, group curl_group 101) and entrypoint.
hook_curl() {
    local root=$1
    chroot "$root" groupadd --system --gid 101 curl_group
    chroot "$root" useradd --system --uid 100 --gid 101 --home-dir /home/curl_user --create-home \
        --shell /bin/sh curl_user
    install -m 0755 "$LOCAL_DIR/images/curl-entrypoint.sh" "$root/entrypoint.sh"
}

# --- base images ----------------------------------------------------------------------------------

build_python() {
    local tar
    scratch "python.tar"
    tar=$SCRATCH
    debian_rootfs "$tar" minbase ca-certificates,netbase,tzdata,python3,python3-venv,python3-pip \
        --customize-hook="$(hook ca_certs)" --customize-hook="$(hook python_links)"
    container_from_rootfs "$tar"
    finish_image python "Debian $SUITE python3 $(deb_version "$tar" python3.11), pip $(deb_version "$tar" python3-pip)" \
        --env PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
        --cmd '["python3"]'
}

build_rust() {
    local tar version triple name source
    version=${NAME[rust]##*:}
    version=${version%%-*}
    triple=$(uname -m)-unknown-linux-gnu
    name="$version-$triple"
    source="${RUSTUP_HOME:-$HOME/.rustup}/toolchains/$name"
    [ -x "$source/bin/rustc" ] || die "the rust image needs the host's Rust $version toolchain: rustup toolchain install $version"
    source=$(readlink -f "$source")
    "$source/bin/rustc" --version | grep -q "^rustc $version " ||
        die "$source is not Rust $version: $("$source/bin/rustc" --version)"
    scratch "rust.tar"
    tar=$SCRATCH
    debian_rootfs "$tar" minbase ca-certificates,gcc,libc6-dev \
        --customize-hook="$(hook ca_certs)" --customize-hook="$(hook rust_toolchain "$source" "$name")"
    container_from_rootfs "$tar"
    finish_image rust "Debian $SUITE gcc $(deb_version "$tar" gcc), the host's rustc $version (no rustup)" \
        --env RUSTUP_HOME=/usr/local/rustup --env CARGO_HOME=/usr/local/cargo \
        --env PATH="/usr/local/cargo/bin:$PATH_DEFAULT" --env RUST_VERSION="$version" --cmd '["bash"]'
}

# What distroless adds to its packages: users, the CA bundle, nsswitch, home and /tmp; no programs at all.
distroless_files() {
    local root=$1
    mkdir -p "$root/etc/ssl/certs" "$root/home/nonroot" "$root/root" "$root/tmp"
    # The bundle update-ca-certificates would make from Debian's certificates (never the host's extras).
    cat "$root"/usr/share/ca-certificates/mozilla/*.crt >"$root/etc/ssl/certs/ca-certificates.crt"
    printf '%s\n' root:x:0:0:root:/root:/sbin/nologin nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin \
        nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin >"$root/etc/passwd"
    printf '%s\n' root:x:0: nobody:x:65534: nonroot:x:65532: >"$root/etc/group"
    printf '%s\n' 'passwd: files' 'group: files' 'hosts: files dns' 'networks: files' 'protocols: files' \
        'services: files' >"$root/etc/nsswitch.conf"
    chown 65532:65532 "$root/home/nonroot"
    chmod 0700 "$root/home/nonroot" "$root/root"
    chmod 1777 "$root/tmp"
    # The packages' own programs (debconf, openssl, mawk, update-ca-certificates) and their paperwork.
    rm -rf "${root:?}"/usr/bin/* "$root"/usr/sbin/* "$root"/usr/share/doc "$root"/usr/share/man "$root"/var/lib/apt \
        "$root"/var/cache/apt "$root"/var/cache/debconf "$root"/var/lib/dpkg/info
    local shell
    for shell in bin/sh bin/bash bin/dash usr/bin/sh; do
        [ ! -e "$root/$shell" ] || die "distroless: $shell is there"
    done
}

build_distroless() {
    local tar
    scratch "distroless.tar"
    tar=$SCRATCH
    debian_rootfs "$tar" extract base-files,libc6,libgcc-s1,libstdc++6,tzdata,netbase,ca-certificates
    # The extract variant runs no customize hooks: the rest is added on the container's files.
    container_from_rootfs "$tar"
    in_mount distroless_files
    finish_image distroless "Debian $SUITE libc6 $(deb_version "$tar" libc6) with libgcc, libstdc++, tzdata, netbase" \
        --user 65532:65532 --workingdir /home/nonroot --env PATH="$PATH_DEFAULT" \
        --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
}

# --- what the VisionTrack chart runs ----------------------------------------------------------------

build_postgres() {
    local tar major=15
    scratch "postgres.tar"
    tar=$SCRATCH
    debian_rootfs "$tar" minbase "postgresql-$major,tzdata,netbase" \
        --essential-hook="$(hook no_main_cluster)" \
        --customize-hook="$(hook renumber postgres 999)" --customize-hook="$(hook postgres "$major")"
    container_from_rootfs "$tar"
    in_mount postgres_socket_dir
    finish_image postgres "Debian postgresql-$major $(deb_version "$tar" "postgresql-$major")" \
        --env PATH="/usr/lib/postgresql/$major/bin:$PATH_DEFAULT" --env PG_MAJOR="$major" \
        --env PGDATA=/var/lib/postgresql/data --env LANG=C.UTF-8 \
        --entrypoint '["docker-entrypoint.sh"]' --cmd '["postgres"]' --stop-signal SIGINT --port 5432 \
        --volume /var/lib/postgresql/data
}

build_redis() {
    local tar
    scratch "redis.tar"
    tar=$SCRATCH
    debian_rootfs "$tar" minbase redis-server \
        --customize-hook="$(hook renumber redis 999)" --customize-hook="$(hook redis)"
    container_from_rootfs "$tar"
    finish_image redis "Debian redis-server $(deb_version "$tar" redis-server)" \
        --user 999:999 --workingdir /data --cmd '["redis-server"]' --port 6379 --volume /data
}

build_curl() {
    local tar
    scratch "curl.tar"
    tar=$SCRATCH
    debian_rootfs "$tar" minbase curl,ca-certificates --customize-hook="$(hook curl)"
    container_from_rootfs "$tar"
    finish_image curl "Debian curl $(deb_version "$tar" curl)" \
        --user 100:101 --entrypoint '["/entrypoint.sh"]' --cmd '["curl"]'
}

# debian_program PACKAGE PATH OUT: PATH of Debian's PACKAGE, extracted to OUT; its version in DEB_VERSION.
DEB_VERSION=""
debian_program() {
    local pkg=$1 path=$2 out=$3 tar
    scratch "$pkg.tar"
    tar=$SCRATCH
    debian_rootfs "$tar" extract "$pkg"
    tar -xOf "$tar" ".$path" >"$out"
    chmod 0755 "$out"
    DEB_VERSION=$(deb_version "$tar" "$pkg")
}

# The exporters as upstream ships them (redis_exporter on scratch, postgres_exporter on busybox), here on the
# distroless stand-in, with Debian's builds of them (older than the tags).
build_redis_exporter() {
    local bin
    scratch "redis_exporter"
    bin=$SCRATCH
    debian_program prometheus-redis-exporter /usr/bin/prometheus-redis-exporter "$bin"
    ensure_image distroless
    new_container "${NAME[distroless]}"
    add_program "$bin" /redis_exporter
    finish_image redis-exporter "Debian prometheus-redis-exporter $DEB_VERSION" \
        --user 59000:59000 --workingdir / --entrypoint '["/redis_exporter"]' --cmd '' --port 9121
}

build_postgres_exporter() {
    local bin
    scratch "postgres_exporter"
    bin=$SCRATCH
    debian_program prometheus-postgres-exporter /usr/bin/prometheus-postgres-exporter "$bin"
    ensure_image distroless
    new_container "${NAME[distroless]}"
    add_program "$bin" /bin/postgres_exporter
    finish_image postgres-exporter "Debian prometheus-postgres-exporter $DEB_VERSION" \
        --user 65534:65534 --workingdir / --entrypoint '["/bin/postgres_exporter"]' --cmd '' --port 9187
}

# --- the cluster and its ingress ------------------------------------------------------------------

# The sandbox image: a static Go program that waits for a signal, alone in the image as upstream's.
build_pause() {
    local bin
    check_tool_tag pause pause
    bin=$(tool_program pause pause)
    new_container scratch
    add_program "$bin" /pause
    finish_image pause "tools.sh pause $(tool_version pause)" --user 65535:65535 --entrypoint '["/pause"]'
}

# CoreDNS may bind port 53 as nonroot: the binary carries cap_net_bind_service, as upstream's.
coredns_capability() { setcap cap_net_bind_service=+ep "$1/coredns"; }

build_coredns() {
    local bin
    command -v setcap >/dev/null || die "setcap is needed for the coredns image: apt-get install libcap2-bin"
    check_tool_tag coredns coredns
    bin=$(tool_program coredns coredns)
    ensure_image distroless
    new_container "${NAME[distroless]}"
    add_program "$bin" /coredns
    in_mount coredns_capability
    finish_image coredns "tools.sh coredns $(tool_version coredns)" \
        --user 65532:65532 --workingdir / --entrypoint '["/coredns"]' --cmd '' --port 53 --port 53/udp
}

# The NetworkPolicy engine drives nftables through the nft program (knftables): upstream builds it on
# distroless-iptables (nft and iptables inside); here on a Debian minbase with nftables and iptables.
build_kube_network_policies() {
    local bin tar
    check_tool_tag kube-network-policies kube-network-policies
    bin=$(tool_program kube-network-policies kube-network-policies)
    scratch "kube-network-policies.tar"
    tar=$SCRATCH
    debian_rootfs "$tar" minbase nftables,iptables
    container_from_rootfs "$tar"
    add_program "$bin" /bin/netpol
    finish_image kube-network-policies "tools.sh kube-network-policies $(tool_version kube-network-policies), Debian nftables $(deb_version "$tar" nftables), iptables $(deb_version "$tar" iptables)" \
        --user 0:0 --workingdir / --cmd '["/bin/netpol"]' --env PATH="$PATH_DEFAULT"
}

# Upstream's image starts /entrypoint.sh, which runs traefik with the arguments; the chart gives only
# options, so traefik itself is the entrypoint here. Root as upstream (the chart runs it as 65532).
build_traefik() {
    local bin
    check_tool_tag traefik traefik
    bin=$(tool_program traefik traefik)
    ensure_image distroless
    new_container "${NAME[distroless]}"
    add_program "$bin" /usr/local/bin/traefik
    finish_image traefik "tools.sh traefik $(tool_version traefik)" \
        --user 0:0 --workingdir / --entrypoint '["/usr/local/bin/traefik"]' --cmd '' --port 80
}

# --- monitoring -----------------------------------------------------------------------------------

# go_image KEY TOOL PROGRAM DEST USER FILES [buildah config options...]: a Go program of tools.sh on
# distroless, started as upstream's image starts it; FILES (a function, or -) adds files around it.
go_image() {
    local key=$1 tool=$2 program=$3 dest=$4 user=$5 files=$6 bin
    shift 6
    check_tool_tag "$key" "$tool"
    bin=$(tool_program "$tool" "$program")
    ensure_image distroless
    new_container "${NAME[distroless]}"
    add_program "$bin" "$dest"
    [ "$files" = - ] || in_mount "$files"
    finish_image "$key" "tools.sh $tool $(tool_version "$tool")" \
        --user "$user" --entrypoint "[\"$dest\"]" --cmd '' "$@"
}

build_prometheus_operator() {
    go_image prometheus-operator prometheus-operator operator /bin/operator 65534:65534 - --workingdir /
}

build_config_reloader() {
    go_image config-reloader prometheus-operator prometheus-config-reloader /bin/prometheus-config-reloader \
        65534:65534 - --workingdir /
}

build_metrics_server() {
    go_image metrics-server metrics-server metrics-server /metrics-server 65534:65534 - --workingdir /
}

# A configuration that scrapes Prometheus itself, as upstream's example does; the operator brings its own.
prometheus_files() {
    local root=$1
    install -d -o 65532 -g 65532 "$root/prometheus" "$root/etc/prometheus"
    printf '%s\n' 'global:' '  scrape_interval: 15s' 'scrape_configs:' '  - job_name: prometheus' \
        '    static_configs:' '      - targets: ["localhost:9090"]' >"$root/etc/prometheus/prometheus.yml"
}

build_prometheus() {
    go_image prometheus prometheus prometheus /bin/prometheus 65532:65532 prometheus_files \
        --workingdir /prometheus --port 9090 \
        --cmd '["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]'
}

alertmanager_files() { install -d -o 65534 -g 65534 "$1/etc/alertmanager" "$1/alertmanager"; }

build_alertmanager() {
    go_image alertmanager alertmanager alertmanager /bin/alertmanager 65534:65534 alertmanager_files \
        --workingdir /alertmanager --port 9093 --volume /alertmanager \
        --cmd '["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager"]'
}

# --- building -------------------------------------------------------------------------------------

require_root() {
    [ "$(id -u)" = 0 ] || die "building images needs root (mmdebstrap and buildah mount)"
    local tool
    for tool in buildah podman mmdebstrap; do
        command -v "$tool" >/dev/null || die "$tool is missing: apt-get install $tool"
    done
}

BUILD_LOG=/dev/null
BUILDING=0
# build_image KEY: build the image KEY names, its output in $LOG_DIR/KEY.log.
build_image() {
    local key=$1
    require_root
    BUILD_LOG="$LOG_DIR/$key.log"
    : >"$BUILD_LOG"
    say "building ${NAME[$key]} (log: $BUILD_LOG)"
    BUILDING=$((BUILDING + 1))
    "build_${key//-/_}"
    BUILDING=$((BUILDING - 1))
    image_exists "${NAME[$key]}" || die "${NAME[$key]} was not made"
}

# ensure_image KEY...: build each image that is not there yet, timed; a present one is kept (and, when
# it is only the base of the image being built, not mentioned).
ensure_image() {
    local key saved_log=$BUILD_LOG
    for key in "$@"; do
        if ! image_exists "${NAME[$key]}"; then
            step "$key" build_image "$key"
        elif [ $BUILDING = 0 ]; then
            say "${NAME[$key]}: present"
            STEP_TIMES+=("$(printf '%-28s %7s' "$key" cached)")
        fi
    done
    BUILD_LOG=$saved_log
}

# bud PART TAG: one VisionTrack image from its unchanged Dockerfile, with the local base images.
bud() {
    local part=$1 tag=$2 log="$LOG_DIR/project-$1.log"
    local -a from=(-f services/Dockerfile --build-arg SERVICE="$part" --target "$part" .)
    [ "$part" != ingestor ] || from=(-f rust-ingestor/Dockerfile rust-ingestor)
    : >"$log"
    say "building docker.io/visiontrack/$part:$tag (log: $log)"
    # --network host: pip and cargo reach the package registries as this machine does.
    (cd "$REPO_ROOT" && logged "$log" nice -n 10 buildah bud --layers --pull=false --network host \
        --tag "docker.io/visiontrack/$part:$tag" "${from[@]}")
}

build_project() {
    local tag=$1 part
    [[ $tag =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "'$tag' is not an image tag"
    ensure_image python rust distroless
    for part in "${PROJECT_PARTS[@]}"; do
        step "visiontrack/$part:$tag" bud "$part" "$tag"
    done
}

# --- loading into the cluster ------------------------------------------------------------------------

load_images() {
    local what name key archive
    local -a names=()
    if [ $# -eq 0 ]; then
        select_keys "${THIRDPARTY_GROUPS[@]}" project
        for key in "${SELECTED[@]}"; do
            ! image_exists "${NAME[$key]}" || names+=("${NAME[$key]}")
        done
    fi
    for what in "$@"; do
        if [[ $what == */* || $what == *:* ]]; then
            names+=("$(normalize "$what")")
        else
            select_keys "$what"
            for key in "${SELECTED[@]}"; do names+=("${NAME[$key]}"); done
        fi
    done
    [ ${#names[@]} -gt 0 ] || die "no images to load: build them first (images.sh thirdparty, images.sh project)"
    for name in "${names[@]}"; do
        image_exists "$name" || die "$name is not built (images.sh list)"
    done
    [ -S "$CONTAINERD_SOCK" ] || die "no containerd socket at $CONTAINERD_SOCK: start the cluster first"
    command -v ctr >/dev/null || die "ctr is missing: apt-get install containerd"
    local present
    local -a todo=()
    present=$(ctr_images)
    # A stand-in's tag never changes what it holds: one containerd has is not sent again.
    for name in "${names[@]}"; do
        if [[ $name != docker.io/visiontrack/* ]] && grep -qxF "$name" <<<"$present"; then
            say "$name: already in containerd"
        else
            todo+=("$name")
        fi
    done
    [ ${#todo[@]} -gt 0 ] || return 0
    scratch "images.tar"
    archive=$SCRATCH
    step "save ${#todo[@]} images" podman save --quiet --multi-image-archive --format docker-archive \
        --output "$archive" "${todo[@]}"
    step "import into containerd" ctr --address "$CONTAINERD_SOCK" --namespace k8s.io images import \
        --snapshotter "${CONTAINERD_SNAPSHOTTER:-overlayfs}" "$archive"
    present=$(ctr_images)
    for name in "${todo[@]}"; do
        grep -qxF "$name" <<<"$present" || die "$name is not in containerd after the import"
    done
    say "loaded ${#todo[@]} images into containerd ($CONTAINERD_SOCK, namespace k8s.io)"
}

ctr_images() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io images list --quiet; }

# load_cluster: every built stand-in, in one import; the node cannot start without the cluster group.
load_cluster() {
    local key
    local -a names=()
    select_keys cluster
    for key in "${SELECTED[@]}"; do
        image_exists "${NAME[$key]}" || die "${NAME[$key]} is not built: images.sh thirdparty cluster"
    done
    select_keys "${THIRDPARTY_GROUPS[@]}"
    for key in "${SELECTED[@]}"; do
        ! image_exists "${NAME[$key]}" || names+=("${NAME[$key]}")
    done
    load_images "${names[@]}"
}

# remove_images WHAT...: remove the images (names, keys or groups) that are built.
remove_images() {
    local what key
    local -a names=()
    for what in "$@"; do
        if [[ $what == */* || $what == *:* ]]; then
            names+=("$(normalize "$what")")
        else
            select_keys "$what"
            for key in "${SELECTED[@]}"; do names+=("${NAME[$key]}"); done
        fi
    done
    for what in "${names[@]}"; do
        if image_exists "$what"; then
            buildah rmi "$what" >/dev/null
            say "removed $what"
        fi
    done
}

# retag FROM TO: the four project images FROM get the tag TO too (an upgrade without a rebuild).
retag() {
    local old=$1 new=$2 part
    for part in "${PROJECT_PARTS[@]}"; do
        image_exists "docker.io/visiontrack/$part:$old" || die "docker.io/visiontrack/$part:$old is not built"
        buildah tag "docker.io/visiontrack/$part:$old" "docker.io/visiontrack/$part:$new"
        say "docker.io/visiontrack/$part:$new = :$old"
    done
}

# --- listing --------------------------------------------------------------------------------------

list_images() {
    local key name state contents
    declare -A built=()
    while read -r name; do built[$name]=1; done < <(buildah images --format '{{.Name}}:{{.Tag}}' 2>/dev/null)
    printf '%-11s %-22s %-64s %s\n' GROUP KEY IMAGE STATE
    for key in "${KEYS[@]}"; do
        name=${NAME[$key]}
        state=missing
        if [ -n "${built[$name]:-}" ] && [ "${GROUP[$key]}" = project ]; then
            state=built
        elif [ -n "${built[$name]:-}" ]; then
            contents=$(buildah inspect --type image --format '{{index .OCIv1.Config.Labels "io.visiontrack.stand-in"}}' "$name")
            state="built${contents:+: $contents}"
            [ "$contents" != "<no value>" ] || state=built
        fi
        printf '%-11s %-22s %-64s %s\n' "${GROUP[$key]}" "$key" "$name" "$state"
    done
}

main() {
    local command=${1:-} key
    shift || true
    write_storage_conf
    case $command in
    bases) ensure base ;;
    thirdparty)
        [ $# -gt 0 ] || set -- "${THIRDPARTY_GROUPS[@]}"
        ensure "$@" ;;
    project)
        require_root
        build_project "${1:-$IMAGE_TAG}" ;;
    retag)
        [ $# -eq 2 ] || die "usage: images.sh retag FROM_TAG TO_TAG"
        retag "$1" "$2"
        return ;;
    load) load_images "$@" ;;
    load-cluster) load_cluster ;;
    remove)
        [ $# -gt 0 ] || die "usage: images.sh remove NAME|KEY|GROUP..."
        remove_images "$@"
        return ;;
    list) list_images; return ;;
    names)
        [ $# -gt 0 ] || set -- base "${THIRDPARTY_GROUPS[@]}" project
        select_keys "$@"
        for key in "${SELECTED[@]}"; do echo "${NAME[$key]}"; done
        return ;;
    _hook)
        local fn=$1
        shift
        "hook_$fn" "$@"
        return ;;
    *) die "usage: images.sh bases | thirdparty [GROUP|KEY...] | project [TAG] | retag FROM TO |
       load [IMAGE...] | load-cluster | remove WHAT... | list | names [GROUP|KEY...]" ;;
    esac
    step_summary
}

# bash reads a script while it runs it: with exit on main's line it never reads past it, so the file may
# be edited while it runs.
main "$@"; exit
