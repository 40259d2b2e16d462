#!/usr/bin/env bash
# Puts a Prometheus server binary in the e2e cache (outside the repo) and prints its path, for
# the metrics test that runs Istio's scrape job against meshed pods. Idempotent: a cached
# binary is reused. Debian's package is used because it is a plain download through apt; it
# is built without kubernetes_sd_configs, which is why the test feeds the pods to Prometheus
# through file_sd_configs instead. Only the binary is unpacked (no service is installed or
# started).
set -euo pipefail
cache=${WEFT_E2E_CACHE:-$HOME/.cache/weft-e2e}
dir=$cache/prometheus-debian
bin=$dir/usr/bin/prometheus
if [[ ! -x $bin ]]; then
  work=$(mktemp -d)
  chmod 755 "$work" # apt fetches as its own user
  trap 'rm -rf "$work"' EXIT
  export DEBIAN_FRONTEND=noninteractive
  # apt-get download needs the package lists; refresh them only when the package is unknown.
  apt-cache show prometheus >/dev/null 2>&1 || apt-get update -qq
  (cd "$work" && apt-get download -qq prometheus >/dev/null)
  deb=$(ls "$work"/prometheus_*.deb)
  mkdir -p "$dir.tmp"
  dpkg-deb -x "$deb" "$dir.tmp"
  rm -rf "$dir"
  mv "$dir.tmp" "$dir"
  echo "install-prometheus: unpacked $(basename "$deb") into $dir" >&2
fi
"$bin" --version >/dev/null 2>&1 || { echo "install-prometheus: $bin does not run" >&2; exit 1; }
echo "$bin"
