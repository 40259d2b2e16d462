# Shared settings of the local cluster (sourced by up.sh, down.sh and the tests' harness).
# Every address is in 198.18.0.0/15, the benchmarking range: never a real network (SPEC §12).
E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER_DIR=${WEFT_CLUSTER_DIR:-$E2E_DIR/.cluster}
. "$E2E_DIR/components/versions.env"
CACHE=${WEFT_E2E_CACHE:-$HOME/.cache/weft-e2e}
K8S_BIN=$CACHE/kubernetes-v$K8S_VERSION
ETCD_BIN=$CACHE/etcd-v$ETCD_VERSION
COREDNS_BIN=$CACHE/coredns-v$COREDNS_VERSION
NODE_NAME=weft-node
NODE_IP=198.18.0.1
NODE_IFACE=weft0
POD_CIDR=198.18.1.0/24
CLUSTER_CIDR=198.18.0.0/16
# Routed to the node: ClusterIPs and LoadBalancer addresses (kube-proxy DNATs both).
SERVICE_CIDR=198.19.0.0/16
# What the API server hands out as ClusterIPs: the lower half, so it never hands out an
# address of the LoadBalancer pool below.
SERVICE_CLUSTER_IP_RANGE=198.19.0.0/17
# LoadBalancer Services' status.loadBalancer.ingress[0].ip (weft-node-agent lb, e2e/README.md).
LB_POOL=198.19.255.0/24
KUBERNETES_SVC_IP=198.19.0.1
DNS_SVC_IP=198.19.0.10
API_PORT=6443
ETCD_CLIENT_PORT=2379
ETCD_PEER_PORT=2380
KUBELET_PORT=10250
KUBECONFIG_PATH=$CLUSTER_DIR/kubeconfig
# Where executables that pods run are installed, readable by any UID (the node agent's image table).
IMAGES_DIR=${WEFT_IMAGES_DIR:-/opt/weft-e2e/images}
