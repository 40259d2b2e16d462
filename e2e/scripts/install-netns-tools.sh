#!/usr/bin/env bash
# Installs what the proxy's network-namespace tests need (iptables and iproute2), only where
# missing, so a fresh machine and a warm one both end up with `iptables-restore` and `ip`.
set -euo pipefail
need=()
command -v iptables-restore >/dev/null 2>&1 || need+=(iptables)
command -v iptables-save >/dev/null 2>&1 || need+=(iptables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
if ((${#need[@]})); then
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  bash "$(dirname "$0")/apt-install.sh" "${need[@]}"
fi
