#!/usr/bin/env bash
# Idempotent set-up for nfvha on Debian 12/13 as root: system packages, CRIU >= 4.2,
# and a virtualenv with the package. Fast (a few checks) when everything is in place.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${NFVHA_VENV:-$ROOT/.venv}
CRIU_MIN=${CRIU_MIN:-4.2}
CRIU_DEB_VERSION=${CRIU_DEB_VERSION:-4.2.1-1}
CRIU_PREFIX=${CRIU_PREFIX:-/usr/local}
STAMP_DIR=${NFVHA_STAMP_DIR:-/var/lib/nfvha/setup}

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (namespaces, cgroups and CRIU need it)"
[ -r /etc/debian_version ] || die "this set-up supports Debian 12 or 13 only"
export DEBIAN_FRONTEND=noninteractive
mkdir -p "$STAMP_DIR"

RUNTIME_PKGS=(iproute2 iptables nftables util-linux procps socat dnsmasq-base iputils-arping
  python3 python3-venv python3-dev ca-certificates xz-utils
  libprotobuf-c1 libnl-3-200 libnet1 libnftables1 libaio1 libgnutls30 libbsd0 libcap2
  libseccomp2)  # the VNFs' seccomp filter (vim/_launch.py loads it through ctypes)
# The dashboard's browser test drives Debian's headless Chromium through its chromedriver
# (Selenium is pointed at /usr/bin/chromedriver and never downloads a browser or driver).
TEST_PKGS=(chromium chromium-driver fonts-dejavu-core)
BUILD_PKGS=(build-essential pkg-config libprotobuf-dev libprotobuf-c-dev protobuf-c-compiler
  protobuf-compiler python3-protobuf libnl-3-dev libnet1-dev libcap-dev libbsd-dev
  libgnutls28-dev uuid-dev libnftables-dev libaio-dev dpkg-dev)

apt_updated=0
apt_update_once() {
  if [ "$apt_updated" = 0 ]; then
    log "apt-get update"
    apt-get update -qq >/dev/null
    apt_updated=1
  fi
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing_pkgs() {
  local p
  for p in "$@"; do
    # Debian 13 renamed some libraries for the 64-bit time_t transition (libaio1t64,
    # libgnutls30t64, ...): either name will do.
    installed "$p" || installed "${p}t64" || echo "$p"
  done
}

install_pkgs() {
  local miss
  miss=$(missing_pkgs "$@")
  [ -z "$miss" ] && return 0
  apt_update_once
  local resolved=() p
  for p in $miss; do
    if ! apt-cache show "$p" >/dev/null 2>&1 && apt-cache show "${p}t64" >/dev/null 2>&1; then
      p="${p}t64"
    fi
    resolved+=("$p")
  done
  log "installing: ${resolved[*]}"
  apt-get install -y -qq --no-install-recommends "${resolved[@]}" >/dev/null
}

version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

criu_ok() {
  local bin v
  bin=$(command -v criu 2>/dev/null) || return 1
  v=$("$bin" --version 2>/dev/null | sed -n 's/^Version: *//p')
  [ -n "$v" ] && version_ge "$v" "$CRIU_MIN" || return 1
  "$bin" check >/dev/null 2>&1
}

mirror_uri() {
  # Reuse the mirror the machine already names; never hard-code a host.
  local uri=""
  if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
    uri=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1)
  fi
  if [ -z "$uri" ] && [ -r /etc/apt/sources.list ]; then
    uri=$(grep -E '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -v security | head -n1)
  fi
  [ -n "$uri" ] || die "cannot find a Debian mirror in the apt sources"
  echo "$uri"
}

build_criu() {
  log "building CRIU $CRIU_DEB_VERSION from Debian's source package (about a minute)"
  install_pkgs "${BUILD_PKGS[@]}"
  local src=/etc/apt/sources.list.d/nfvha-sid-src.sources
  if [ ! -f "$src" ]; then
    printf 'Types: deb-src\nURIs: %s\nSuites: sid\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$(mirror_uri)" >"$src"
    apt_updated=0
  fi
  apt_update_once
  local work=/var/cache/nfvha/criu-build
  rm -rf "$work"; mkdir -p "$work"
  ( cd "$work" && apt-get source --download-only "criu=$CRIU_DEB_VERSION" >/dev/null 2>&1 || true )
  local orig
  orig=$(ls "$work"/criu_*.orig.tar.* 2>/dev/null | head -n1) || true
  [ -n "$orig" ] || die "could not download criu_${CRIU_DEB_VERSION%-*}.orig.tar.* (apt-get source); check the apt mirror"
  tar -C "$work" -xf "$orig"
  local dir
  dir=$(find "$work" -maxdepth 1 -mindepth 1 -type d -name 'criu-*' | head -n1)
  make -C "$dir" -j"$(nproc)" criu >"$work/build.log" 2>&1 || { tail -n 30 "$work/build.log" >&2; die "CRIU build failed (log: $work/build.log)"; }
  install -m 0755 "$dir/criu/criu" "$CRIU_PREFIX/sbin/criu"
  hash -r
  criu_ok || { criu check >&2 || true; die "built CRIU does not pass 'criu check'"; }
  log "CRIU $(criu --version | sed -n 's/^Version: *//p') installed at $CRIU_PREFIX/sbin/criu"
}

# ClusterLabs fence agents for active fencing (nfvha.ha.fencing): Debian 12 ships them all
# in fence-agents; Debian 13 splits them per agent (fence-agents there is a transitional
# package pulling every agent). fence_ipmilan drives ipmitool; fence_dummy serves the tests.
FENCE_PKGS=(fence-agents-ipmilan fence-agents-dummy)
if ! installed fence-agents-ipmilan && ! installed fence-agents; then
  apt_update_once
  apt-cache show fence-agents-ipmilan >/dev/null 2>&1 || FENCE_PKGS=(fence-agents)
elif installed fence-agents; then
  FENCE_PKGS=(fence-agents)
fi

install_pkgs "${RUNTIME_PKGS[@]}" "${TEST_PKGS[@]}" "${FENCE_PKGS[@]}" ipmitool

# Real TCP VNFs for the tests and benchmarks: Debian's haproxy and nginx's stream proxy
# (also the UDP proxy benchmarks/dataplane.py measures the forwarder against);
# and etcd v3 (Debian 12: 3.4), the state store of a manager cluster (nfvha.store.etcd).
# Their packages would start system services on ports 80, 8404 and 2379; a policy-rc.d
# keeps them stopped during the install (the tests run their own copies: the VNFs in
# sandboxes, etcd as throwaway members on free ports of 127.0.0.1).
SERVICE_PKGS=(haproxy nginx libnginx-mod-stream etcd-server etcd-client)
if [ -n "$(missing_pkgs "${SERVICE_PKGS[@]}")" ]; then
  policy=/usr/sbin/policy-rc.d
  had_policy=0; [ -e "$policy" ] && had_policy=1
  [ "$had_policy" = 1 ] || { printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 0755 "$policy"; }
  install_pkgs "${SERVICE_PKGS[@]}" || { [ "$had_policy" = 1 ] || rm -f "$policy"; die "installing ${SERVICE_PKGS[*]} failed"; }
  [ "$had_policy" = 1 ] || rm -f "$policy"
fi
# A Debian criu older than $CRIU_MIN would shadow ours only if earlier on PATH; /usr/local/sbin comes first.
criu_ok || build_criu

# Python: the virtualenv holds the package and its pinned lower bounds.
PY=${PYTHON:-python3}
want_hash=$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.nfvha-setup" 2>/dev/null)" != "$want_hash" ]; then
  log "creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
  "$VENV/bin/pip" install -q -e "$ROOT[dev]"
  echo "$want_hash" >"$VENV/.nfvha-setup"
fi
log "ready: $(criu --version | sed -n 's/^Version: *//p' | sed 's/^/CRIU /'), venv $VENV"
