#!/usr/bin/env bash
# Installs what the build and the tests need on a fresh Debian/Ubuntu machine. Idempotent:
# each step runs only when its result is missing.
#   - libclang-dev: bindgen for the bundled RocksDB build.
#   - chopsticks (@acala-network/chopsticks@1.5.1, pinned in package.json / package-lock.json)
#     into node_modules/: it serves the real subtensor runtime to tests/tests/subtensor.rs.
#   - chromium: tests/tests/dashboard.rs renders the dashboard page in it, headless.
#   - prometheus (server and promtool): tests/tests/metrics.rs runs the Grafana dashboard's
#     queries against a real scrape.
#   - bittensor (the Python SDK, pinned below) into target/bittensor-venv/: the oracle that
#     tests/tests/wallet_oracle.rs checks btcli wallet files against, both ways; and
#     bittensor-drand (pinned below), the oracle tests/tests/timelock_oracle.rs checks
#     commit-reveal v4 commits against, both ways.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi

if ! dpkg -s libclang-dev >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq libclang-dev
fi

if ! command -v npm >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq nodejs npm
fi

if [ ! -x "$ROOT/node_modules/.bin/chopsticks" ]; then
  if [ -f "$ROOT/package-lock.json" ]; then
    npm ci --no-audit --no-fund --prefix "$ROOT"
  else
    npm install --no-audit --no-fund --prefix "$ROOT" @acala-network/chopsticks@1.5.1
  fi
fi
"$ROOT/node_modules/.bin/chopsticks" --version >/dev/null

# Debian's Chromium: tests/tests/dashboard.rs renders the dashboard page in it, headless.
if ! command -v chromium >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  $SUDO DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi

# Debian's Prometheus: tests/tests/metrics.rs lints the exposition with promtool, scrapes a
# devnet with the server and runs every query of config/grafana/apiary.json.
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  $SUDO DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
fi

BITTENSOR_VERSION=11.3.0
DRAND_VERSION=2.0.0
VENV="$ROOT/target/bittensor-venv"
has_bittensor() {
  "$VENV/bin/python" -c "import importlib.metadata as m, sys; import bittensor.wallet, bittensor_drand; sys.exit(m.version('bittensor') != '$BITTENSOR_VERSION' or m.version('bittensor-drand') != '$DRAND_VERSION')" >/dev/null 2>&1
}
if ! has_bittensor; then
  if ! python3 -c "import venv, ensurepip" >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq python3 python3-venv
  fi
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "bittensor==$BITTENSOR_VERSION" "bittensor-drand==$DRAND_VERSION"
fi
has_bittensor || { echo "bittensor==$BITTENSOR_VERSION and bittensor-drand==$DRAND_VERSION are not importable from $VENV (see the pip output above)" >&2; exit 1; }
