#!/usr/bin/env bash
# Installs Debian packages for the test, cluster and bench tooling, one install at a time:
# callers running at once (the network-namespace tests start in parallel on a fresh machine)
# wait for each other on a lock instead of failing on dpkg's, and apt itself waits for dpkg's
# lock. A package another caller installed meanwhile is not installed again. Needs root.
set -euo pipefail
(($#)) || exit 0
if [[ $(id -u) -ne 0 ]]; then
  echo "apt-install: need root to install $*" >&2
  exit 1
fi
exec 9>/var/lock/weft-apt-install.lock
flock 9
missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
((${#missing[@]})) || exit 0
echo "installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
