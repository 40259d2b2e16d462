#!/usr/bin/env bash
# `make deploy`: installs the freshly built weft binaries as the local cluster's image
# `ghcr.io/weft-mesh/weft` (e2e/cluster/images.json) and applies config/default with kustomize.
# Idempotent; restarts the operator when its binaries changed.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/cluster/env.sh"
target=${CARGO_TARGET_DIR:-$(cd "$here/.." && pwd)/target}
kubectl() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }
[[ -f $KUBECONFIG_PATH ]] || { echo "no local cluster: run make cluster-up first" >&2; exit 1; }

# The same build also stands for the canary image (ghcr.io/weft-mesh/weft-canary), so canary
# upgrades run real proxies here; only the image name differs.
changed=0
for image in weft weft-canary; do
  dir=$IMAGES_DIR/$image/bin
  mkdir -p "$dir"; chmod 755 "$IMAGES_DIR/$image" "$dir"
  for bin in weft weft-proxy; do
    if ! cmp -s "$target/debug/$bin" "$dir/$bin"; then
      install -m 755 "$target/debug/$bin" "$dir/$bin.new" && mv "$dir/$bin.new" "$dir/$bin"
      [[ $image == weft ]] && changed=1
    fi
  done
done
installed=$(kubectl -n weft-system get deployment weft-operator -o name 2>/dev/null || true)
# The local cluster has no Istio and no OSM: install the policy APIs weft reads (Istio's
# PeerAuthentication and AuthorizationPolicy, SMI's access control) first.
kubectl apply --server-side --force-conflicts -k "$here/../config/istio-api" >/dev/null
kubectl apply --server-side --force-conflicts -k "$here/../config/smi-api" >/dev/null
# The Gateway API (GAMMA routes; issue 20's gateways) only where the cluster has none, or has
# the copy this script installed (labelled by config/gateway-api), as a user would.
owner=$(kubectl get crd httproutes.gateway.networking.k8s.io -o jsonpath='{.metadata.labels.app\.kubernetes\.io/part-of}' 2>/dev/null || echo absent)
if [[ $owner == absent || $owner == weft-gateway-api ]]; then
  kubectl apply --server-side --force-conflicts -k "$here/../config/gateway-api" >/dev/null
fi
kubectl apply --server-side --force-conflicts -k "$here/../config/default" >/dev/null
# A new binary reaches running pods only through a restart (the image tag does not change).
if [[ $changed == 1 && -n $installed ]]; then
  kubectl -n weft-system rollout restart deployment/weft-operator >/dev/null
fi
kubectl -n weft-system rollout status deployment/weft-operator --timeout=120s
