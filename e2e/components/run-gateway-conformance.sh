#!/usr/bin/env bash
# Runs the Gateway API conformance suite (sigs.k8s.io/gateway-api/conformance at the version
# of config/gateway-api, built from its module by the wrapper module gateway-conformance/)
# against the local cluster with weft deployed, for the GATEWAY-HTTP, GATEWAY-GRPC,
# GATEWAY-TLS, GATEWAY-TCP and MESH-HTTP profiles' core features, and writes the
# ConformanceReport to
# docs/conformance/report.yaml.
#   WEFT_CONFORMANCE_TEST  one test's ShortName (the suite's --run-test), to iterate on it:
#                          the base resources stay for the next run and the report goes to
#                          $WEFT_E2E_CACHE/gateway-conformance-partial.yaml, never docs/
#   WEFT_CONFORMANCE_RUN   a `go test -run` pattern of subtests (TestConformance/<ShortName>),
#                          to run part of the suite (report as above); empty: all of it
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
# The suite's Gateways live in gateway-conformance-infra with their certificate Secrets, and
# the Secret ReferenceGrant tests put a certificate in gateway-conformance-web-backend: grant
# the operator reading TLS Secrets in both, as `weft gateway install` grants it in a gateway's
# namespace (the operator may not grant itself Secrets).
for ns in gateway-conformance-infra gateway-conformance-web-backend; do
kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -f - >/dev/null <<YAML
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: weft-gateway-secrets, namespace: $ns}
rules:
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: weft-gateway-secrets, namespace: $ns}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: weft-gateway-secrets}
subjects:
- {kind: ServiceAccount, name: weft-operator, namespace: weft-system}
YAML
done
run=${WEFT_CONFORMANCE_RUN:-TestConformance}
report=$root/docs/conformance/report.yaml
partial=()
# Only a full run writes the committed report (tests/conformance_report.rs checks it).
if [[ -n ${WEFT_CONFORMANCE_RUN:-}${WEFT_CONFORMANCE_TEST:-} ]]; then
  report=$cache/gateway-conformance-partial.yaml
  partial=(--cleanup-base-resources=false)
  [[ -n ${WEFT_CONFORMANCE_TEST:-} ]] && partial+=(--run-test="$WEFT_CONFORMANCE_TEST")
fi
# What weft claims: the profiles' core features and the extended ones whose tests pass
# (docs/conformance/README.md lists the rest). WEFT_CONFORMANCE_EXTRA_FEATURES adds more, to
# try them in a partial run before claiming them.
features=Gateway,HTTPRoute,GRPCRoute,TLSRoute,TLSRouteModeTerminate,TLSRouteModeMixed,TCPRoute,ReferenceGrant,Mesh
features+=,HTTPRouteResponseHeaderModification,HTTPRouteBackendRequestHeaderModification
features+=,HTTPRouteQueryParamMatching,HTTPRouteMethodMatching,HTTPRouteNamedRouteRule,GRPCRouteNamedRouteRule
features+=,HTTPRoutePathRewrite,HTTPRouteHostRewrite,HTTPRoutePathRedirect,HTTPRoutePortRedirect,HTTPRouteSchemeRedirect
features+=,HTTPRouteCORS
features+=,HTTPRoute303RedirectStatusCode,HTTPRoute307RedirectStatusCode,HTTPRoute308RedirectStatusCode
features+=,HTTPRouteRequestMirror,HTTPRouteRequestMultipleMirrors,HTTPRouteRequestPercentageMirror
features+=,HTTPRouteRequestTimeout,HTTPRouteBackendTimeout,HTTPRouteParentRefPort
features+=,MeshConsumerRoute,MeshClusterIPMatching,MeshHTTPRouteNamedRouteRule,MeshHTTPRouteQueryParamMatching
features+=,MeshHTTPRouteRedirectPath,MeshHTTPRouteRedirectPort,MeshHTTPRouteSchemeRedirect,MeshHTTPRouteBackendRequestHeaderModification
features+=,MeshHTTPRouteRewritePath
features+=,${WEFT_CONFORMANCE_EXTRA_FEATURES:-}
features=${features%,}
mkdir -p "$root/docs/conformance"
cd "$root"
exec "$bin" -test.run "$run" -test.v -test.timeout ${WEFT_CONFORMANCE_TIMEOUT:-60m} "${partial[@]}" \
  --gateway-class=weft \
  --supported-features="$features" \
  --conformance-profiles=GATEWAY-HTTP,GATEWAY-GRPC,GATEWAY-TLS,GATEWAY-TCP,MESH-HTTP \
  --namespace-labels=istio-injection=enabled \
  --report-output="$report" \
  --organization=weft --project=weft --url=https://weft.dev \
  --version="$(git -C "$root" describe --always --dirty)" \
  --contact=https://weft.dev/issues
