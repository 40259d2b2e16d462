#!/usr/bin/env bash
# Builds HashiCorp Vault from the Go module proxy into the e2e cache (outside the repo) and
# prints the binary's path, for the tests that sign weft's CSRs through a real Vault PKI engine.
# Idempotent: a cached binary is reused. A cold build takes ~7+ minutes on 2 cores (500 MB).
#   WEFT_E2E_CACHE  cache root (default ~/.cache/weft-e2e)
#   VAULT_VERSION   default 1.21.0; 1.21.4 does not build from the proxy (it needs a
#                   github.com/hashicorp/vault/sdk version that was never published).
set -euo pipefail
version=${VAULT_VERSION:-1.21.0}
cache=${WEFT_E2E_CACHE:-$HOME/.cache/weft-e2e}
dir=$cache/vault-v$version
bin=$dir/vault
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
export GOCACHE=${GOCACHE:-$HOME/.cache/go-build}

if [[ ! -f $dir/.complete ]]; then
  # The wrapper module lives beside the binary, not in the repo: requiring vault alone makes
  # Go's minimal version selection pick exactly vault's own pinned dependencies, and the
  # checksum database verifies each, so there is no go.sum worth committing.
  wrapper=$dir/wrapper
  mkdir -p "$wrapper"
  cat >"$wrapper/go.mod" <<MOD
// Wrapper module: builds vault (its main package is the root of github.com/hashicorp/vault).
module weft.dev/e2e/components/vault

go 1.26.0
MOD
  echo "install-vault: building vault v$version into $dir (cold builds take ~7+ minutes on 2 cores)" >&2
  start=$SECONDS
  (cd "$wrapper" && go get "github.com/hashicorp/vault@v$version" \
    && go build -trimpath -ldflags "-s -w -X github.com/hashicorp/vault/version.fullVersion=$version" \
      -o "$bin" github.com/hashicorp/vault)
  touch "$dir/.complete"
  echo "install-vault: built in $((SECONDS - start)) s" >&2
fi
"$bin" version >/dev/null 2>&1 || { echo "install-vault: $bin does not run" >&2; exit 1; }
echo "$bin"
