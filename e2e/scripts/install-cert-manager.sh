#!/usr/bin/env bash
# Builds cert-manager's own CA issuer, approver and issuer controllers (root module
# github.com/cert-manager/cert-manager from the Go module proxy) with the hand-written main in
# e2e/cert-manager/controller/main.go, into the e2e cache (outside the repo), and prints the
# binary's path. cert-manager's real main (module .../cmd/controller) is not served by the module
# proxy (404), so it cannot be built; see e2e/cert-manager/README.md. Idempotent (cached).
#   WEFT_E2E_CACHE        cache root (default ~/.cache/weft-e2e)
#   CERT_MANAGER_VERSION  default 1.21.2 (the version e2e/cert-manager/crds/ come from)
set -euo pipefail
version=${CERT_MANAGER_VERSION:-1.21.2}
cache=${WEFT_E2E_CACHE:-$HOME/.cache/weft-e2e}
here=$(cd "$(dirname "$0")/../cert-manager/controller" && pwd)
dir=$cache/cert-manager-v$version
bin=$dir/cert-manager-controller
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
export GOCACHE=${GOCACHE:-$HOME/.cache/go-build}

# A changed main.go rebuilds: its hash is part of the stamp.
stamp=$(sha256sum "$here/main.go" | cut -c1-16)
if [[ ! -f $dir/.complete-$stamp ]]; then
  wrapper=$dir/wrapper
  mkdir -p "$wrapper"
  cat >"$wrapper/go.mod" <<MOD
// Wrapper module: cert-manager's root module with weft's e2e main (requiring it alone makes
// Go's minimal version selection pick cert-manager's own pinned dependencies).
module weft.dev/e2e/components/cert-manager

go 1.26.0
MOD
  cp "$here/main.go" "$wrapper/main.go"
  echo "install-cert-manager: building cert-manager v$version controllers into $dir" >&2
  start=$SECONDS
  (cd "$wrapper" && go get "github.com/cert-manager/cert-manager@v$version" \
    && go build -trimpath -ldflags "-s -w" -o "$bin" .)
  rm -f "$dir"/.complete-*
  touch "$dir/.complete-$stamp"
  echo "install-cert-manager: built in $((SECONDS - start)) s" >&2
fi
"$bin" -h >/dev/null 2>&1 || { echo "install-cert-manager: $bin does not run" >&2; exit 1; }
echo "$bin"
