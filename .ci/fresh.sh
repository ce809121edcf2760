#!/usr/bin/env bash
# Proves .ci/setup.sh on a machine where none of what it installs is present: a minimal Debian
# root (debootstrap --variant=minbase, from the Debian mirror this machine's apt uses, plus sudo),
# entered with chroot, once as root and once as a user with sudo. Each run must pass twice: the
# first installs everything (and setup.sh itself checks that chopsticks, the Python oracles,
# Chromium and Prometheus then work), the second must find everything present and install nothing.
#
# About 10 minutes of which most is downloading, so .ci/run calls it only when what it proves has
# changed: a stamp of setup.sh, this file and the npm lock lives in $APIARY_FRESH_CACHE, and a
# fresh CI machine has none. APIARY_FRESH_CHECK=always|auto|never (default auto).
# Needs root (debootstrap, mount, chroot).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${APIARY_FRESH_CACHE:-$HOME/.cache/apiary-fresh}"
MODE="${APIARY_FRESH_CHECK:-auto}"
SUITE="${APIARY_FRESH_SUITE:-bookworm}"

stamp="$(cat "$ROOT/.ci/setup.sh" "$ROOT/.ci/fresh.sh" "$ROOT/package.json" "$ROOT/package-lock.json" | sha256sum | cut -c1-16)"
case "$MODE" in
  never)
    echo "fresh.sh: skipped (APIARY_FRESH_CHECK=never)"
    exit 0
    ;;
  auto)
    if [ -f "$CACHE/passed-$stamp" ]; then
      echo "fresh.sh: skipped: setup.sh passed on a fresh root at this stamp ($stamp); APIARY_FRESH_CHECK=always runs it again"
      exit 0
    fi
    ;;
  always) ;;
  *)
    echo "fresh.sh: APIARY_FRESH_CHECK must be always, auto or never, not '$MODE'" >&2
    exit 2
    ;;
esac
if [ "$(id -u)" != 0 ]; then
  echo "fresh.sh: needs root (debootstrap, mount and chroot); run it as root or with APIARY_FRESH_CHECK=never" >&2
  exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
fi

# The mirror this machine's apt already uses (no host is named here).
mirror="${APIARY_DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
  mirror="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}')"
fi
if [ -z "$mirror" ]; then
  mirror="$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list 2>/dev/null || true)"
fi
if [ -z "$mirror" ]; then
  echo "fresh.sh: found no Debian mirror in /etc/apt: set APIARY_DEBIAN_MIRROR to one" >&2
  exit 1
fi

mkdir -p "$CACHE"
WORK="$(mktemp -d "$CACHE/run.XXXXXX")"
mounts=()
cleanup() {
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[$i]}" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

t0=$SECONDS
# The base root is built once per suite and mirror; setup.sh never runs in it, only in copies.
BASE="$CACHE/base-$SUITE"
if [ ! -f "$BASE/.complete" ]; then
  rm -rf "$BASE"
  echo "fresh.sh: debootstrap $SUITE (minbase + sudo) from $mirror"
  debootstrap --variant=minbase --include=sudo "$SUITE" "$BASE" "$mirror" >"$CACHE/debootstrap.log" 2>&1 || {
    tail -20 "$CACHE/debootstrap.log" >&2
    echo "fresh.sh: debootstrap failed (log above)" >&2
    exit 1
  }
  touch "$BASE/.complete"
fi
# Packages both runs download go to one shared archive (a download cache; nothing is installed
# from it that a run did not ask for).
mkdir -p "$CACHE/apt-archives/partial"

# The tree to set up: what git tracks (a fresh clone's content), without node_modules or target.
SRC="$WORK/src.tar"
git -C "$ROOT" ls-files -z --cached --others --exclude-standard | tar -C "$ROOT" --null -T - -cf "$SRC"

# Of this machine's environment, what says how to reach the registries (proxies, CA bundles) goes
# along; nothing else (no PATH, no toolchain, no cache).
passenv=()
for v in SSL_CERT_FILE SSL_CERT_DIR NODE_EXTRA_CA_CERTS PIP_CERT REQUESTS_CA_BUNDLE CURL_CA_BUNDLE \
  http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY PIP_INDEX_URL PIP_EXTRA_INDEX_URL \
  npm_config_registry; do
  if [ -n "${!v:-}" ]; then passenv+=("$v=${!v}"); fi
done

run_in_root() { # run_in_root NAME USER
  local name="$1" user="$2" dir="$WORK/$1" log="$WORK/$1.log"
  cp -a "$BASE" "$dir"
  cp /etc/resolv.conf "$dir/etc/resolv.conf"
  if [ -d /etc/apt/sources.list.d ]; then
    rm -f "$dir/etc/apt/sources.list"
    cp /etc/apt/sources.list.d/*.sources "$dir/etc/apt/sources.list.d/" 2>/dev/null || cp /etc/apt/sources.list "$dir/etc/apt/sources.list"
  fi
  # The machine's network trust (a TLS-inspecting egress adds its CA here) is part of the
  # machine, not of what setup.sh installs: its local CAs go along, and ca-certificates (which
  # setup.sh installs) adds them to the bundle.
  if [ -d /usr/local/share/ca-certificates ]; then
    mkdir -p "$dir/usr/local/share/ca-certificates"
    cp -a /usr/local/share/ca-certificates/. "$dir/usr/local/share/ca-certificates/"
  fi
  mount -t proc proc "$dir/proc" && mounts+=("$dir/proc")
  mount --bind /dev "$dir/dev" && mounts+=("$dir/dev")
  mount --bind "$CACHE/apt-archives" "$dir/var/cache/apt/archives" && mounts+=("$dir/var/cache/apt/archives")
  local home=/root
  if [ "$user" != root ]; then
    chroot "$dir" useradd -m -s /bin/bash "$user"
    echo "$user ALL=(ALL) NOPASSWD:ALL" >"$dir/etc/sudoers.d/$user"
    home="/home/$user"
  fi
  mkdir -p "$dir$home/apiary"
  tar -C "$dir$home/apiary" -xf "$SRC"
  chroot "$dir" chown -R "$user:" "$home/apiary"
  local t=$SECONDS
  local script="set -eo pipefail; cd ~/apiary && bash .ci/setup.sh && echo 'fresh.sh: second run' && bash .ci/setup.sh 2>&1 | tee /tmp/second.log && ! grep -q 'setup.sh: installing' /tmp/second.log && target/node-venv/bin/chopsticks --version"
  if chroot "$dir" /usr/sbin/runuser -u "$user" -- env -i "${passenv[@]}" HOME="$home" PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin /bin/bash -c "$script" >"$log" 2>&1; then
    echo "fresh.sh: $name: setup.sh passed as $user on a fresh $SUITE root in $((SECONDS - t)) s; its second run installed nothing"
  else
    tail -40 "$log" >&2
    echo "fresh.sh: $name: setup.sh failed as $user on a fresh $SUITE root (log above)" >&2
    return 1
  fi
}

run_in_root as-root root
run_in_root as-user dev
touch "$CACHE/passed-$stamp"
echo "fresh.sh: passed in $((SECONDS - t0)) s"
