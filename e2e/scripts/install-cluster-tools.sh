#!/usr/bin/env bash
# Installs the host tools the local cluster needs (Debian packages), only those missing.
# Idempotent; needs root. Used by `make cluster-up` and the test targets.
set -euo pipefail
declare -A pkg_for=(
  [ip]=iproute2 [iptables]=iptables [iptables-restore]=iptables [conntrack]=conntrack
  [busybox]=busybox [curl]=curl [openssl]=openssl [setpriv]=util-linux [nsenter]=util-linux
  [tcpdump]=tcpdump [ethtool]=ethtool
)
missing=()
for tool in "${!pkg_for[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${pkg_for[$tool]}")
done
if ((${#missing[@]})); then
  pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
  echo "[tools] installing: $pkgs" >&2
  # shellcheck disable=SC2086
  bash "$(dirname "$0")/apt-install.sh" $pkgs
fi
