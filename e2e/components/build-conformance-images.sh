#!/usr/bin/env bash
# Builds the programs of the images the Gateway API conformance suite runs, from their Go
# modules, and installs them where the node agent's image table finds images
# (<images dir>/<dir>/bin; entries in e2e/cluster/images.json):
#   echo-basic     registry.k8s.io/gateway-api/echo-basic: the suite's own
#                  sigs.k8s.io/gateway-api/conformance/echo-basic
#   echo-advanced  registry.k8s.io/gateway-api/echo-advanced: Istio's echo `server` and
#                  `client` (istio.io/istio pkg/test/echo/cmd/...); the image also carries
#                  /cert.crt and /cert.key (Istio's tests/testdata/certs/dns test pair), which
#                  the suite's MESH manifests pass as --crt/--key. Pods here see the node's
#                  filesystem, so those two go to the node's / (never over a different file).
# Versions are pinned in versions.env and in the wrapper modules echo-basic/ and
# echo-advanced/ (this script fails when the two disagree). Idempotent: a build whose cache
# directory is complete is not redone. Not part of `make test` (a cold build takes minutes).
#   WEFT_E2E_CACHE   cache root (default ~/.cache/weft-e2e)
#   WEFT_IMAGES_DIR  images dir (default /opt/weft-e2e/images, as e2e/cluster/env.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/versions.env"
cache=${WEFT_E2E_CACHE:-$HOME/.cache/weft-e2e}
images=${WEFT_IMAGES_DIR:-/opt/weft-e2e/images}
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
export GOCACHE=${GOCACHE:-$HOME/.cache/go-build}

log() { echo "[conformance-images] $*" >&2; }

# pinned MODULE_DIR MODULE VERSION: the wrapper module requires exactly the pinned version.
pinned() {
  grep -qE "^(require )?[[:space:]]*$2 $3( |$)" "$1/go.mod" ||
    { log "$1/go.mod does not require $2 $3 (versions.env): update both together"; exit 1; }
}

# build NAME OUT MODULE_DIR PKG...
build() {
  local name=$1 out=$2 mod=$3; shift 3
  if [[ -f $out/.complete ]]; then log "$name: cached in $out"; return; fi
  mkdir -p "$out"
  log "$name: building $*"
  local start=$SECONDS
  (cd "$mod" && go build -trimpath -ldflags "-s -w" -o "$out/" "$@")
  touch "$out/.complete"
  log "$name: built in $((SECONDS - start)) s"
}

pinned "$here/echo-basic" sigs.k8s.io/gateway-api/conformance "v$GATEWAY_API_VERSION"
pinned "$here/echo-advanced" istio.io/istio "$ISTIO_ECHO_VERSION"

basic=$cache/echo-basic-v$GATEWAY_API_VERSION
advanced=$cache/istio-echo-$ISTIO_ECHO_VERSION
build echo-basic "$basic" "$here/echo-basic" sigs.k8s.io/gateway-api/conformance/echo-basic
build echo-advanced "$advanced" "$here/echo-advanced" \
  istio.io/istio/pkg/test/echo/cmd/server istio.io/istio/pkg/test/echo/cmd/client
if [[ ! -f $advanced/cert.key ]]; then
  certs=$(cd "$here/echo-advanced" && go list -m -f '{{.Dir}}' istio.io/istio)/tests/testdata/certs/dns
  install -m 644 "$certs/cert-chain.pem" "$advanced/cert.crt"
  install -m 644 "$certs/key.pem" "$advanced/cert.key"
fi

# Install: readable by every UID, as e2e/cluster/up.sh installs the cluster's own images.
mkdir -p "$images"/{echo-basic,echo-advanced}/bin
chmod 755 "$images" "$images"/echo-basic "$images"/echo-advanced
install -m 755 "$basic/echo-basic" "$images/echo-basic/bin/echo-basic"
install -m 755 "$advanced/server" "$advanced/client" "$images/echo-advanced/bin/"
for f in cert.crt cert.key; do
  if [[ -e /$f ]] && ! cmp -s "$advanced/$f" "/$f"; then
    log "/$f exists and is not Istio's test $f: left alone (echo-advanced's --crt/--key need it)"
    exit 1
  fi
  install -m 644 "$advanced/$f" "/$f"
done
log "installed in $images/echo-basic and $images/echo-advanced, /cert.crt and /cert.key"
