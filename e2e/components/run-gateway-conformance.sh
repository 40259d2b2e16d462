#!/usr/bin/env bash
# Runs the Gateway API conformance suite (sigs.k8s.io/gateway-api/conformance at the version
# of config/gateway-api, built from its module by the wrapper module gateway-conformance/)
# against the local cluster with weft deployed, for the GATEWAY-HTTP, GATEWAY-GRPC and
# MESH-HTTP profiles' core features, and writes the ConformanceReport to
# docs/conformance/report.yaml.
#   WEFT_CONFORMANCE_RUN   a `go test -run` pattern of subtests (TestConformance/<ShortName>),
#                          to run part of the suite; empty: all of it
#   WEFT_E2E_CACHE         where the test binary is cached (default ~/.cache/weft-e2e)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
. "$here/versions.env"
cache=${WEFT_E2E_CACHE:-$HOME/.cache/weft-e2e}
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
export KUBECONFIG=${KUBECONFIG:-$root/e2e/.cluster/kubeconfig}
grep -q "sigs.k8s.io/gateway-api/conformance v$GATEWAY_API_VERSION" "$here/gateway-conformance/go.mod" ||
  { echo "gateway-conformance/go.mod does not pin v$GATEWAY_API_VERSION (versions.env)" >&2; exit 1; }
bin=$cache/gateway-conformance-v$GATEWAY_API_VERSION.test
if [[ ! -x $bin ]]; then
  (cd "$here/gateway-conformance" && go test -c -o "$bin" .)
fi
kubectl apply -f "$root/config/components/gateway-class/gatewayclass.yaml" >/dev/null
# The suite's Gateways live in gateway-conformance-infra with their certificate Secrets: grant
# the operator reading TLS Secrets there, as `weft gateway install` grants it in a gateway's
# namespace (the operator may not grant itself Secrets).
kubectl create namespace gateway-conformance-infra --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -f - >/dev/null <<YAML
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: weft-gateway-secrets, namespace: gateway-conformance-infra}
rules:
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: weft-gateway-secrets, namespace: gateway-conformance-infra}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: weft-gateway-secrets}
subjects:
- {kind: ServiceAccount, name: weft-operator, namespace: weft-system}
YAML
run=${WEFT_CONFORMANCE_RUN:-TestConformance}
mkdir -p "$root/docs/conformance"
cd "$root"
exec "$bin" -test.run "$run" -test.v -test.timeout ${WEFT_CONFORMANCE_TIMEOUT:-60m} \
  --gateway-class=weft \
  --supported-features=Gateway,HTTPRoute,GRPCRoute,ReferenceGrant,Mesh \
  --conformance-profiles=GATEWAY-HTTP,GATEWAY-GRPC,MESH-HTTP \
  --namespace-labels=istio-injection=enabled \
  --report-output="$root/docs/conformance/report.yaml" \
  --organization=weft --project=weft --url=https://weft.dev \
  --version="$(git -C "$root" describe --always --dirty)" \
  --contact=https://weft.dev/issues
