#!/bin/sh
# /entrypoint.sh of the local stand-in for docker.io/curlimages/curl (Debian's curl, built by
# k8s/local/images.sh), as the official one: arguments that are not a command are curl's.
set -e
if [ "${1#-}" != "$1" ] || ! command -v "$1" >/dev/null 2>&1; then
    set -- curl "$@"
fi
exec "$@"
