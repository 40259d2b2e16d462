#!/usr/bin/env bash
# Builds the local cluster's real components from their Go modules (SPEC §12) into a cache
# outside the repo, one directory per component version, so a fresh clone on the same machine
# reuses them. Idempotent: a component whose directory is complete is not rebuilt.
#   WEFT_E2E_CACHE  cache root (default ~/.cache/weft-e2e)
# Prints the bin directory of each component on stdout, one `NAME=DIR` line each.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/versions.env"
cache=${WEFT_E2E_CACHE:-$HOME/.cache/weft-e2e}
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
export GOCACHE=${GOCACHE:-$HOME/.cache/go-build}

log() { echo "[components] $*" >&2; }

# build NAME DIR MODULE_DIR LDFLAGS PKG...
build() {
  local name=$1 out=$2 mod=$3 ldflags=$4; shift 4
  if [[ -f $out/.complete ]]; then log "$name: cached in $out"; echo "$name=$out"; return; fi
  mkdir -p "$out"
  log "$name: building $* (cold builds take many minutes on 2 cores)"
  local start=$SECONDS
  (cd "$mod" && go build -trimpath -tags=selinux,notest -ldflags "-s -w $ldflags" -o "$out/" "$@")
  touch "$out/.complete"
  log "$name: built in $((SECONDS - start)) s"
  echo "$name=$out"
}

k8s_minor=${K8S_VERSION#*.}; k8s_minor=${k8s_minor%%.*}
k8s_ldflags=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$k8s_minor"
  k8s_ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done
build kubernetes "$cache/kubernetes-v$K8S_VERSION" "$here/kubernetes" "$k8s_ldflags" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl
build etcd "$cache/etcd-v$ETCD_VERSION" "$here/etcd" "" go.etcd.io/etcd/server/v3
# etcd's main package is named after its directory (server/); give it its usual name.
[[ -x $cache/etcd-v$ETCD_VERSION/etcd ]] || mv "$cache/etcd-v$ETCD_VERSION/server" "$cache/etcd-v$ETCD_VERSION/etcd"
build coredns "$cache/coredns-v$COREDNS_VERSION" "$here/coredns" "" github.com/coredns/coredns
