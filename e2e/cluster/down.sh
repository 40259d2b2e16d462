#!/usr/bin/env bash
# Stops everything up.sh started and removes every network namespace, veth, route, iptables
# rule, mount and process it made. Safe to run twice.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/env.sh"
log() { echo "[cluster] $*" >&2; }

stop() {
  local pidfile=$CLUSTER_DIR/pids/$1.pid
  [[ -f $pidfile ]] || return 0
  local pid; pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $1"
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$pidfile"
}
# The node agent first: it stops its pods. Then the control plane.
stop node-agent
stop lb-controller
stop kube-proxy
stop kube-scheduler
stop kube-controller-manager
stop kube-apiserver
stop etcd

# Whatever the node agent left behind (it may have been killed): pod processes, mounts,
# network namespaces, veths.
for ns in $(ip netns list 2>/dev/null | awk '/^weft-pod-/{print $1}'); do
  for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
  ip netns delete "$ns" 2>/dev/null
done
for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep '^wv' ); do
  ip link delete "$link" 2>/dev/null
done
if [[ -d $CLUSTER_DIR/node ]]; then
  grep " $CLUSTER_DIR/node" /proc/mounts | awk '{print $2}' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
fi
# kube-proxy's chains, then the host addresses.
if [[ -x $K8S_BIN/kube-proxy ]]; then "$K8S_BIN/kube-proxy" --cleanup >/dev/null 2>&1; fi
ip route delete "$SERVICE_CIDR" 2>/dev/null
ip link delete "$NODE_IFACE" 2>/dev/null
rm -rf "$CLUSTER_DIR"
log "down"
