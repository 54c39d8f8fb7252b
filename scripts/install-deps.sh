#!/usr/bin/env bash
# Install the system packages VisionTrack runs on (Debian/Ubuntu), only those missing.
# Postgres, Redis, nginx and Prometheus run from these binaries locally; wrk drives the benchmarks.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
have redis-server || need+=(redis-server)
have nginx || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
have prometheus || need+=(prometheus)
have promtool || need+=(prometheus)
have wrk || need+=(wrk)
# The MQTT benchmark's yardstick broker, and mosquitto_pub for trying MQTT by hand.
have mosquitto || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
have mosquitto_pub || need+=(mosquitto-clients)
pkg_installed prometheus-redis-exporter || need+=(prometheus-redis-exporter)
pkg_installed prometheus-postgres-exporter || need+=(prometheus-postgres-exporter)
python3 -c "import venv, ensurepip" 2>/dev/null || need+=(python3-venv)
have cc || need+=(build-essential)
have curl || need+=(curl)
# Rust for the ingestor (needs 1.94+). Debian 12's `cargo` is 1.65; its `cargo-web`/`rustc-web` (kept current
# for browser builds) are recent, so prefer those where the distribution has them.
if ! have cargo; then
  if apt-cache show cargo-web >/dev/null 2>&1; then need+=(cargo-web rustc-web rust-web-clippy)
  else need+=(cargo rustc rust-clippy); fi
fi

if [ ${#need[@]} -eq 0 ]; then
  echo "==> system packages: all present"
  exit 0
fi
if ! have apt-get; then
  echo "error: missing ${need[*]} and no apt-get here; install them with your package manager" >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "==> installing system packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts packaged services; VisionTrack runs its own instances on its own ports, so stop those.
for svc in redis-server nginx mosquitto prometheus prometheus-redis-exporter prometheus-postgres-exporter postgresql; do
  if have systemctl && systemctl is-active --quiet "$svc" 2>/dev/null; then $SUDO systemctl stop "$svc" || true; fi
done
echo "==> system packages installed"
if have cargo; then
  rust_minor=$(cargo --version | sed -E 's/^cargo 1\.([0-9]+).*/\1/')
  if [ "${rust_minor:-0}" -lt 94 ]; then
    echo "warning: $(cargo --version) is older than the ingestor needs (1.94); install a newer Rust (rustup)" >&2
  fi
fi
