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
#
# `fresh.sh commands` instead runs the README's two commands, exactly as the README writes them
# (read from it), one after the other as root on a fresh root: command 1 (apt-get + cargo run
# devnet) first, then command 2 (setup.sh + cargo test --workspace). "Rust installed", which the
# README presumes, is this machine's toolchain bind-mounted (rustup and the cargo home with its
# downloaded crates; the root has no network path to rustup) plus gcc and libc6-dev, rustup's
# own prerequisites for linking. Measured here: command 1 406 s, command 2 650 s.
# .ci/run calls it after its own tests (no overlap), under its own stamp, which also covers the
# README.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${APIARY_FRESH_CACHE:-$HOME/.cache/apiary-fresh}"
MODE="${APIARY_FRESH_CHECK:-auto}"
SUITE="${APIARY_FRESH_SUITE:-bookworm}"
WHAT="${1:-setup}"
case "$WHAT" in
  setup | commands) ;;
  *)
    echo "fresh.sh: usage: fresh.sh [setup|commands]" >&2
    exit 2
    ;;
esac

stamp="$(cat "$ROOT/.ci/setup.sh" "$ROOT/.ci/fresh.sh" "$ROOT/package.json" "$ROOT/package-lock.json" | sha256sum | cut -c1-16)"
if [ "$WHAT" = commands ]; then
  stamp="commands-$(cat "$ROOT/.ci/setup.sh" "$ROOT/.ci/fresh.sh" "$ROOT/package.json" "$ROOT/package-lock.json" "$ROOT/README.md" | sha256sum | cut -c1-16)"
fi
case "$MODE" in
  never)
    echo "fresh.sh: skipped (APIARY_FRESH_CHECK=never)"
    exit 0
    ;;
  auto)
    if [ -f "$CACHE/passed-$stamp" ]; then
      echo "fresh.sh $WHAT: skipped: passed on a fresh root at this stamp ($stamp); APIARY_FRESH_CHECK=always runs it again"
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

# A copy of the base root at DIR, with this machine's resolver, apt sources and local CAs, and
# /proc, /dev and the shared apt archive mounted (unmounted by cleanup).
prepare_root() { # prepare_root DIR
  local dir="$1"
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
}

run_in_root() { # run_in_root NAME USER
  local name="$1" user="$2" dir="$WORK/$1" log="$WORK/$1.log"
  prepare_root "$dir"
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

# Both README commands as root, as written, with Rust installed (see the top of this file).
run_commands_in_root() {
  local dir="$WORK/commands" log="$WORK/commands.log"
  local cmd1 cmd2
  cmd1="$(grep -m1 '^apt-get install ' "$ROOT/README.md")"
  cmd2="$(grep -m1 '^bash .ci/setup.sh && ' "$ROOT/README.md")"
  if [ -z "$cmd1" ] || [ -z "$cmd2" ]; then
    echo "fresh.sh commands: the README's two commands were not found (an 'apt-get install' line and a 'bash .ci/setup.sh &&' line)" >&2
    return 1
  fi
  # A cold debug build and every test binary: about 12 GiB in the root's target dir.
  local free_kb
  free_kb=$(df -Pk "$WORK" | awk 'NR==2 {print $4}')
  if [ "$free_kb" -lt $((16 * 1024 * 1024)) ]; then
    echo "fresh.sh commands: only $((free_kb / 1024)) MiB free at $WORK; it needs 16 GiB (a cold build and the test binaries); free some and run it again" >&2
    return 1
  fi
  prepare_root "$dir"
  mkdir -p "$dir/opt/rustup" "$dir/opt/cargo"
  mount --bind "${RUSTUP_HOME:-$HOME/.rustup}" "$dir/opt/rustup" && mounts+=("$dir/opt/rustup")
  mount --bind "${CARGO_HOME:-$HOME/.cargo}" "$dir/opt/cargo" && mounts+=("$dir/opt/cargo")
  mkdir -p "$dir/root/apiary"
  tar -C "$dir/root/apiary" -xf "$SRC"
  chroot "$dir" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq gcc libc6-dev >"$log" 2>&1
  local script="set -eo pipefail; cd ~/apiary
s=\$SECONDS; { $cmd1; } || exit 1; echo \"fresh.sh commands: command 1 passed in \$((SECONDS - s)) s\"
s=\$SECONDS; { $cmd2; } || exit 1; echo \"fresh.sh commands: command 2 passed in \$((SECONDS - s)) s\""
  if chroot "$dir" env -i "${passenv[@]}" HOME=/root RUSTUP_HOME=/opt/rustup CARGO_HOME=/opt/cargo \
    PATH=/opt/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    DEBIAN_FRONTEND=noninteractive /bin/bash -c "$script" >>"$log" 2>&1; then
    grep '^fresh.sh commands:' "$log"
  else
    tail -60 "$log" >&2
    echo "fresh.sh commands: the README's commands failed as root on a fresh $SUITE root (log above)" >&2
    return 1
  fi
}

if [ "$WHAT" = commands ]; then
  run_commands_in_root
else
  run_in_root as-root root
  run_in_root as-user dev
fi
touch "$CACHE/passed-$stamp"
echo "fresh.sh $WHAT: passed in $((SECONDS - t0)) s"
