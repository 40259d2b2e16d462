#!/usr/bin/env bash
# `make demo`: the user stories of SPEC §1 on the local cluster, told as a person would do them.
# Installs what it needs, brings the cluster up (the first time builds Kubernetes: ~20 min),
# installs weft with kustomize, enrols a namespace, runs the bookstore demo, shows mTLS, flips
# STRICT, does a canary upgrade with a tag, and leaves the cluster running.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/e2e/cluster/env.sh"
target=${CARGO_TARGET_DIR:-$root/target}
export KUBECONFIG=$KUBECONFIG_PATH
kubectl() { "$K8S_BIN/kubectl" "$@"; }
weft() { "$target/debug/weft" "$@"; }

bold=$(tput bold 2>/dev/null || true); plain=$(tput sgr0 2>/dev/null || true)
step() { printf '\n%s==> %s%s\n' "$bold" "$*" "$plain"; }
show() { printf '%s$ %s%s\n' "$bold" "$*" "$plain"; "$@"; }
started=$(date +%s)
elapsed() { echo "$(( $(date +%s) - started ))s"; }

# Runs a command until it succeeds (at most $1 seconds), quietly.
until_ok() {
  local limit=$1; shift
  local end=$(( $(date +%s) + limit ))
  until "$@" >/dev/null 2>&1; do
    (( $(date +%s) < end )) || { echo "gave up after ${limit}s: $*" >&2; return 1; }
    sleep 1
  done
}
# `wget` from a pod's first container; prints the answer or the failure.
call() {
  local container
  container=$(kubectl get pod -n "$1" "$2" -o jsonpath='{.spec.containers[0].name}')
  kubectl exec -n "$1" "$2" -c "$container" -- sh -c "timeout 10 wget -qO- $3 2>&1" || true
}

step "Tools and the local cluster (first run: builds Kubernetes, etcd and CoreDNS, ~20 min)"
bash "$root/e2e/cluster/up.sh"

step "Build weft and install it with kustomize ($(elapsed))"
(cd "$root" && cargo build --locked -p weft --bins 2>&1 | tail -n 1)
bash "$root/e2e/scripts/deploy.sh"
show kubectl -n weft-system get pods -l app.kubernetes.io/name=weft-operator
until_ok 120 kubectl -n weft-system get meshconfig stable
show kubectl wait --for=condition=Ready meshconfig/stable -n weft-system --timeout=120s
show kubectl get meshconfigs,revisiontags -n weft-system

step "Enrol a namespace through a tag, and deploy the bookstore ($(elapsed))"
kubectl create namespace bookstore --dry-run=client -o yaml | kubectl apply -f - >/dev/null
# A second run starts from PERMISSIVE again.
kubectl delete -f "$root/manifests/demo/strict.yaml" --ignore-not-found >/dev/null 2>&1 || true
show weft tag set prod --revision stable --overwrite
show weft namespace add bookstore --revision prod
show kubectl apply -n bookstore -f "$root/manifests/demo/bookstore.yaml"
# Pods of an earlier run predate this enrolment: restart them so they follow it.
kubectl -n bookstore rollout restart deployment >/dev/null
show kubectl apply -f "$root/manifests/demo/outsider.yaml"
kubectl -n bookstore rollout status deployment/bookstore --timeout=180s >/dev/null
kubectl -n bookstore rollout status deployment/bookbuyer --timeout=180s >/dev/null
kubectl -n outsider wait --for=condition=Ready pod/curl --timeout=120s >/dev/null
echo "Every bookstore pod runs its app and a weft proxy (2/2):"
show kubectl get pods -n bookstore

step "Traffic between meshed pods is mTLS ($(elapsed))"
buyer=$(kubectl -n bookstore get pods -l app=bookbuyer -o jsonpath='{.items[0].metadata.name}')
store=$(kubectl -n bookstore get pods -l app=bookstore -o jsonpath='{.items[0].metadata.name}')
show kubectl -n bookstore logs "$buyer" -c bookbuyer --tail=2
echo "The bookstore's proxy metrics (Istio's names), read through the API server:"
sleep 3
kubectl get --raw "/api/v1/namespaces/bookstore/pods/$store:15020/proxy/stats/prometheus" \
  | grep '^istio_requests_total' | grep 'source_principal="spiffe://cluster.local/ns/bookstore/sa/bookbuyer"' \
  | sed 's/,/,\n    /g' | head -n 24
show weft proxy-status -n bookstore

step "PERMISSIVE by default: a client outside the mesh still gets an answer"
printf '%s$ kubectl exec -n outsider curl -- wget -qO- http://bookstore.bookstore/%s\n' "$bold" "$plain"
call outsider curl http://bookstore.bookstore/from-outside

step "STRICT with Istio's PeerAuthentication: outsiders are refused, meshed clients are not"
show kubectl apply -f "$root/manifests/demo/strict.yaml"
until_ok 60 sh -c "! \"$K8S_BIN/kubectl\" exec -n outsider curl -- sh -c 'timeout 10 wget -qO- http://bookstore.bookstore/'"
printf '%s$ kubectl exec -n outsider curl -- wget -qO- http://bookstore.bookstore/%s\n' "$bold" "$plain"
call outsider curl http://bookstore.bookstore/refused
printf '%s$ kubectl exec -n bookstore %s -- wget -qO- http://bookstore/%s\n' "$bold" "$buyer" "$plain"
call bookstore "$buyer" http://bookstore/from-the-mesh
show weft describe pod "$store" -n bookstore

step "Canary upgrade: a new revision, then move the tag ($(elapsed))"
show kubectl apply -f "$root/manifests/demo/canary.yaml"
echo "Fields left out were copied from the default revision, visibly:"
show kubectl get meshconfig canary -n weft-system -o jsonpath='{.spec}{"\n"}'
show weft tag set prod --revision canary --overwrite
until_ok 30 sh -c "[ \"\$(\"$K8S_BIN/kubectl\" get revisiontag prod -n weft-system -o jsonpath='{.status.stalePods}')\" -gt 0 ]" || true
echo "The namespace follows the tag; its running pods are stale until restarted:"
show weft namespace list
show kubectl rollout restart deployment -n bookstore
kubectl -n bookstore rollout status deployment/bookstore --timeout=180s >/dev/null
kubectl -n bookstore rollout status deployment/bookbuyer --timeout=180s >/dev/null
show kubectl get pods -n bookstore -L weft.dev/revision
until_ok 30 sh -c "[ \"\$(\"$K8S_BIN/kubectl\" get revisiontag prod -n weft-system -o jsonpath='{.status.stalePods}')\" = 0 ]" || true
show kubectl get revisiontags -n weft-system

step "Done in $(elapsed). The cluster keeps running; look next at:"
cat <<EOF
  export KUBECONFIG=$KUBECONFIG_PATH PATH=$K8S_BIN:$target/debug:\$PATH
  weft proxy-status                         # each proxy: revision, config SYNCED/STALE, cert expiry
  weft describe pod <pod> -n bookstore      # identity and mTLS mode per port, and why
  kubectl get meshconfigs,revisiontags -n weft-system
  kubectl get --raw /api/v1/namespaces/bookstore/pods/<pod>:15020/proxy/stats/prometheus
  kubectl delete -f manifests/demo/strict.yaml   # back to PERMISSIVE
  make cluster-down                         # stop the cluster and remove everything it made
EOF
