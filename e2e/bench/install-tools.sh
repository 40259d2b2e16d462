#!/usr/bin/env bash
# Installs the data-plane benchmark's peers and load generator (SPEC §14), only where missing:
#   - HAProxy and nginx (with its stream module) from Debian packages, their services never
#     started (the benchmark runs its own instances in network namespaces);
#   - fortio and ghostunnel built from their Go modules (versions pinned by the wrapper
#     modules in tools/) into $WEFT_BENCH_CACHE/bin (default ~/.cache/weft-bench/bin), with
#     the module and build caches under ~/.cache too, so a fresh clone reuses them.
# A Go tool that cannot be built is reported (its log is kept in the cache) and the script
# goes on: the benchmark leaves that peer out and says why. Prints `NAME=PATH` per tool.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${WEFT_BENCH_CACHE:-$HOME/.cache/weft-bench}
bin=$cache/bin
mkdir -p "$bin"
log() { echo "[bench-tools] $*" >&2; }

bash "$here/../scripts/install-netns-tools.sh"

# --- Debian packages ---
need=()
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v nginx >/dev/null 2>&1 || need+=(nginx)
ls /usr/lib/nginx/modules/ngx_stream_module.so >/dev/null 2>&1 || need+=(libnginx-mod-stream)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]]; then log "need root to install ${need[*]}"; exit 1; fi
  log "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Keep the packages' init scripts from starting system-wide nginx/haproxy on port 80.
  policy=/usr/sbin/policy-rc.d made_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
  fi
  trap '[[ $made_policy == 1 ]] && rm -f "$policy"' EXIT
  bash "$here/../scripts/apt-install.sh" "${need[@]}"
fi
echo "haproxy=$(command -v haproxy)"
echo "nginx=$(command -v nginx)"

# --- Go tools ---
# Each is built from a wrapper module in tools/<name>/ (go.mod pins the version, go.sum the
# checksums), as e2e/components/build.sh builds the cluster's components.
export GOTOOLCHAIN=local GOFLAGS=-mod=mod
export GOMODCACHE=${WEFT_BENCH_GOMODCACHE:-$HOME/.cache/weft-bench/gomod}
export GOCACHE=${GOCACHE:-$HOME/.cache/go-build}

# go_tool NAME PACKAGE CGO LDFLAGS: builds PACKAGE at the version tools/NAME/go.mod requires
# into $cache/NAME-VERSION/, then links $bin/NAME to it.
go_tool() {
  local name=$1 pkg=$2 cgo=$3 ldflags=$4
  local mod=$here/tools/$name
  local version
  version=$(sed -n "s|^require $pkg \(v[^ ]*\)$|\1|p" "$mod/go.mod")
  local out=$cache/$name-$version
  if [[ ! -x $out/$name ]]; then
    if ! command -v go >/dev/null 2>&1; then
      log "$name: no Go toolchain on PATH"; echo "$name="; return
    fi
    mkdir -p "$out"
    log "$name: building $pkg $version from its Go module"
    local start=$SECONDS
    if ! (cd "$mod" && CGO_ENABLED=$cgo go build -trimpath -ldflags "-s -w ${ldflags//@VERSION@/$version}" \
        -o "$out/$name.tmp" "$pkg") >"$out/build.log" 2>&1; then
      log "$name: build failed (log: $out/build.log):"
      tail -5 "$out/build.log" >&2
      echo "$name="
      return
    fi
    mv "$out/$name.tmp" "$out/$name"
    log "$name: built in $((SECONDS - start)) s"
  fi
  ln -sfn "$out/$name" "$bin/$name"
  echo "$name=$bin/$name"
}

go_tool fortio fortio.org/fortio 0 ""
# cgo: ghostunnel links PKCS#11 support (the benchmark loads its keys from PEM files).
go_tool ghostunnel github.com/ghostunnel/ghostunnel 1 "-X main.version=@VERSION@"
