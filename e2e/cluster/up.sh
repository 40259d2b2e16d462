#!/usr/bin/env bash
# Brings up the local cluster (SPEC §12): real etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kube-proxy (iptables mode) and CoreDNS, plus weft's node agent that runs pods
# as processes in network namespaces. Idempotent: components already running are left alone.
# Needs root. Prints the kubeconfig path at the end.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/env.sh"
. "$here/pki.sh"
[[ $(id -u) == 0 ]] || { echo "cluster-up needs root (network namespaces, iptables)" >&2; exit 1; }

log() { echo "[cluster] $*" >&2; }
start_time=$SECONDS

bash "$E2E_DIR/scripts/install-cluster-tools.sh"
log "building components (cached after the first time)"
bash "$E2E_DIR/components/build.sh" >/dev/null
log "building the node agent and the test app"
cargo build --quiet --locked -p weft-node-agent --bins
target=${CARGO_TARGET_DIR:-$(cd "$E2E_DIR/.." && pwd)/target}
NODE_AGENT=$target/debug/weft-node-agent

mkdir -p "$CLUSTER_DIR"/{pids,logs,etcd,node}
make_pki "$CLUSTER_DIR/pki"
for who in admin controller-manager scheduler kube-proxy node lb-controller; do
  make_kubeconfig "$CLUSTER_DIR/$who.kubeconfig" "$who"
done
cp "$CLUSTER_DIR/admin.kubeconfig" "$KUBECONFIG_PATH"

# Images: executables pods run, readable by every UID (root's home is not).
install_images() {
  mkdir -p "$IMAGES_DIR"/{busybox,curl,coredns,echo}/bin
  chmod 755 /opt/weft-e2e "$IMAGES_DIR" "$IMAGES_DIR"/*
  [[ -x $IMAGES_DIR/busybox/bin/busybox ]] || { cp "$(command -v busybox)" "$IMAGES_DIR/busybox/bin/"; "$IMAGES_DIR/busybox/bin/busybox" --install -s "$IMAGES_DIR/busybox/bin"; }
  ln -sf "$(command -v curl)" "$IMAGES_DIR/curl/bin/curl"
  install -m 755 "$here/images/curl-entrypoint.sh" "$IMAGES_DIR/curl/bin/entrypoint.sh"
  install -m 755 "$COREDNS_BIN/coredns" "$IMAGES_DIR/coredns/bin/coredns"
  install -m 755 "$target/debug/weft-echo" "$IMAGES_DIR/echo/bin/weft-echo"
}
install_images

# Host networking: the node address lives on its own interface; Services route there so
# host-originated traffic to a ClusterIP reaches kube-proxy's DNAT.
sysctl -qw net.ipv4.ip_forward=1
# A port-less bridge holds the node address (the dummy driver is not in every kernel).
ip link show "$NODE_IFACE" >/dev/null 2>&1 || ip link add "$NODE_IFACE" type bridge
ip link set "$NODE_IFACE" up
ip addr replace "$NODE_IP/32" dev "$NODE_IFACE"
ip route replace "$SERVICE_CIDR" dev "$NODE_IFACE" src "$NODE_IP"

running() { [[ -f $CLUSTER_DIR/pids/$1.pid ]] && kill -0 "$(cat "$CLUSTER_DIR/pids/$1.pid")" 2>/dev/null; }
start() {
  local name=$1; shift
  if running "$name"; then log "$name already running"; return; fi
  log "starting $name"
  setsid "$@" >"$CLUSTER_DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$CLUSTER_DIR/pids/$name.pid"
}
wait_for() {
  local what=$1 tries=$2; shift 2
  for ((i = 0; i < tries; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  log "$what did not come up; last log lines:"; tail -n 30 "$CLUSTER_DIR/logs/$what.log" >&2 || true
  return 1
}
pki=$CLUSTER_DIR/pki
kubectl() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

start etcd "$ETCD_BIN/etcd" --name weft-e2e --data-dir "$CLUSTER_DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "weft-e2e=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync --quota-backend-bytes 2147483648
wait_for etcd 60 curl -fsS "http://127.0.0.1:$ETCD_CLIENT_PORT/health"

# Audit log of what weft's operator asks the API server (test rbac_audit: every grant of
# config/rbac is used, and nothing it asks for is forbidden). Metadata only, weft's own
# service account only.
cat > "$CLUSTER_DIR/audit-policy.yaml" <<'YAML'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  users: ["system:serviceaccount:weft-system:weft-operator"]
- level: None
YAML
start kube-apiserver "$K8S_BIN/kube-apiserver" \
  --audit-policy-file "$CLUSTER_DIR/audit-policy.yaml" --audit-log-path "$CLUSTER_DIR/audit.log" \
  --audit-log-maxsize 200 --audit-log-maxbackup 1 \
  --etcd-servers "http://127.0.0.1:$ETCD_CLIENT_PORT" \
  --advertise-address "$NODE_IP" --bind-address "$NODE_IP" --secure-port "$API_PORT" \
  --service-cluster-ip-range "$SERVICE_CLUSTER_IP_RANGE" \
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
  --client-ca-file "$pki/ca.crt" --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority "$pki/ca.crt" --kubelet-preferred-address-types InternalIP \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --api-audiences https://kubernetes.default.svc.cluster.local \
  --enable-aggregator-routing=true --allow-privileged=true --profiling=false
wait_for kube-apiserver 240 kubectl get --raw /readyz

start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
  --kubeconfig "$CLUSTER_DIR/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$CLUSTER_DIR/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$CLUSTER_DIR/controller-manager.kubeconfig" \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --use-service-account-credentials=true --leader-elect=false \
  --bind-address 127.0.0.1 --secure-port 10257 --profiling=false
start kube-scheduler "$K8S_BIN/kube-scheduler" \
  --kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" \
  --authentication-kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" \
  --authorization-kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" \
  --leader-elect=false --bind-address 127.0.0.1 --secure-port 10259 --profiling=false

# kube-proxy exits when its config file changes: write it only when the content differs.
cat > "$CLUSTER_DIR/kube-proxy.yaml.new" <<KP
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: $CLUSTER_CIDR
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
clientConnection:
  kubeconfig: $CLUSTER_DIR/kube-proxy.kubeconfig
conntrack:
  maxPerCore: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
KP
if cmp -s "$CLUSTER_DIR/kube-proxy.yaml.new" "$CLUSTER_DIR/kube-proxy.yaml"; then rm "$CLUSTER_DIR/kube-proxy.yaml.new"
else mv "$CLUSTER_DIR/kube-proxy.yaml.new" "$CLUSTER_DIR/kube-proxy.yaml"; fi
start kube-proxy "$K8S_BIN/kube-proxy" --config "$CLUSTER_DIR/kube-proxy.yaml"

# LoadBalancer addresses from $LB_POOL (as cloud-provider-kind does for kind): the provider
# writes status.loadBalancer.ingress; kube-proxy DNATs that address like the ClusterIP, and the
# route of $SERVICE_CIDR above brings the node's own traffic to it. Its own identity, with
# only what it needs.
kubectl apply -f - >/dev/null <<'RBAC'
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "weft-e2e:lb-controller"}
rules:
- {apiGroups: [""], resources: [services], verbs: [get, list, watch]}
- {apiGroups: [""], resources: [services/status], verbs: [patch, update]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "weft-e2e:lb-controller"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "weft-e2e:lb-controller"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "weft-e2e:lb-controller"}
RBAC
start lb-controller "$NODE_AGENT" lb --kubeconfig "$CLUSTER_DIR/lb-controller.kubeconfig" --pool "$LB_POOL"

start node-agent "$NODE_AGENT" run \
  --kubeconfig "$CLUSTER_DIR/node.kubeconfig" --node-name "$NODE_NAME" --node-ip "$NODE_IP" \
  --pod-cidr "$POD_CIDR" --state-dir "$CLUSTER_DIR/node" --images-dir "$IMAGES_DIR" \
  --images-file "$here/images.json" --serving-cert "$pki/kubelet-serving.crt" --serving-key "$pki/kubelet-serving.key" \
  --client-ca "$pki/ca.crt" --dns-ip "$DNS_SVC_IP" --port "$KUBELET_PORT"
wait_for node-agent 120 bash -c "\"$K8S_BIN/kubectl\" --kubeconfig \"$KUBECONFIG_PATH\" get node $NODE_NAME -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -q True"

log "installing CoreDNS"
sed -e "s/__DNS_IP__/$DNS_SVC_IP/" -e "s/__COREDNS_VERSION__/$COREDNS_VERSION/" "$here/coredns.yaml" | kubectl apply -f - >/dev/null
kubectl -n kube-system rollout status deployment/coredns --timeout=180s >/dev/null

log "ready in $((SECONDS - start_time)) s"
echo "export KUBECONFIG=$KUBECONFIG_PATH"
echo "kubectl: $K8S_BIN/kubectl"
