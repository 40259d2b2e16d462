#!/usr/bin/env bash
# `make bench` (SPEC §13/§14): the data-plane benchmark in bare network namespaces and the
# control-plane micro-benchmarks, all in one run, compared as ratios against a direct path.
#
# Data plane: two namespaces on a veth pair (198.18.250.1 client, 198.18.250.2 server; that
# /24 only), fortio's echo server in the server namespace and fortio's open-loop load
# (1,000 rps, 1 KB POST bodies echoed back, 8 connections) in the client namespace, through:
#   direct      client → server, no proxy
#   weft        weft-proxy pair: iptables capture in both namespaces (weft-proxy init), the
#               proxies as UID 1337, mTLS with SPIFFE identities (STRICT), a `tcp` Service (L4)
#   weft-http   the same pair with an `http` Service: HTTP terminated on both proxies
#   weft-authz  weft-http with 10 AuthorizationPolicies of 10 rules each on the server proxy
#               (one DENY, nine ALLOW; only the last rule of the last ALLOW matches: every
#               rule is tried on every request)
#   weft-h2     weft-authz with HTTP/2 (h2c) from the load generator to the echo server
#   haproxy     HAProxy pair, TCP mode: plain → mutual TLS → plain
#   nginx       nginx stream pair: plain → mutual TLS → plain
#   haproxy-http, nginx-http  the same peers as HTTP reverse proxies (HTTP/1.1 keep-alive
#               upstream connections, mutual TLS between them): the HTTP-terminating peers
#   direct-h2, null-h2  direct and the null relay pair with h2c: weft-h2's baselines
#   haproxy-h2  the HAProxy http pair with HTTP/2 end to end (h2c in, ALPN h2 on the mutual-TLS
#               hop, h2c to the echo server): the h2 peer of weft-h2
#   ghostunnel  ghostunnel client/server pair (mutual TLS, URI SAN checks)
#   null        weft-null-relay pair: plaintext byte copy on one event loop, nothing else (no
#               TLS, no parsing, no capture): what two user-space hops cost on this machine
#   null-threads  the same with one blocking thread per direction instead of an event loop
#   gw-weft, gw-nginx, gw-haproxy (and -tls)  issue 20's ingress rows: ONE reverse proxy in
#               front of the echo server (weft-proxy gateway from files, nginx, HAProxy), plain
#               or TLS-terminating front, plus new TLS handshakes per second (gateway.sh)
#   weft-route, weft-route-noretry  issue 19's rows: weft-http whose client routes through 20
#               match rules then a 90/10 weighted route (Istio's default retries; retries off)
#               (route.sh)
#   weft-http-again  weft-http once more, after the route rows: the A/A control. Two runs of
#               one path differ by this much, so a difference between paths below it is not
#               resolved by this machine; the route rows are compared with the mean of the two
# The load generator and the echo servers run on CPU 0, every proxy on CPU 1 (taskset), one
# worker thread each. Per proxy: CPU seconds from /proc/<pid>/stat, RSS idle and the largest
# RSS sampled under load. Then each path at full speed (-qps 0, every round) for its maximum
# throughput, and new connections per second without keep-alive (direct and weft: every one
# a new mTLS handshake between the proxies). The fixed-rate runs are repeated in rounds (every
# path once per round, in the same order, proxies restarted): the report takes, per path, the median
# over rounds of its percentile minus the direct path's in the same round, so a slow minute of
# the machine lands on one round of every path instead of on one path.
#
# Control plane: `cargo bench --bench control_plane` pinned to one CPU (webhook reviews and
# CSR signing per core).
#
# Writes e2e/bench/results/latest.json, prints a markdown table and puts it in README.md
# between <!-- bench:start --> and <!-- bench:end -->. Needs root; refuses to run while the
# local cluster is up (it would share the two cores). Everything it starts is stopped and its
# namespaces are deleted on exit, also on error; running it again starts clean.
#
# Knobs (environment): WEFT_BENCH_DURATION (20s per round), WEFT_BENCH_ROUNDS (3),
# WEFT_BENCH_QPS (1000), WEFT_BENCH_WARMUP (2s),
# WEFT_BENCH_MAX_DURATION (10s), WEFT_BENCH_SCENARIOS (all: "direct null null-threads weft weft-http weft-route
# weft-route-noretry weft-http-again weft-authz haproxy nginx
# haproxy-http nginx-http ghostunnel direct-h2 null-h2 weft-h2 haproxy-h2 gw-weft gw-nginx gw-haproxy
# gw-weft-tls gw-nginx-tls gw-haproxy-tls"), WEFT_BENCH_CONTROL_PLANE (1; 0 skips the control-plane stage; a section name such as
# route_eval or authz runs that section only),
# WEFT_BENCH_NO_README=1 (leave README.md alone), WEFT_BENCH_WORKDIR (/tmp/weft-bench),
# WEFT_BENCH_PROXY (a prebuilt weft-proxy to measure instead of this tree's, for A/B runs),
# WEFT_BENCH_NULL_RELAY (a prebuilt weft-null-relay: no cargo build at all with WEFT_BENCH_PROXY),
# WEFT_BENCH_CP_SECONDS (5), WEFT_BENCH_ALLOW_CLUSTER=1 (run beside the cluster; marked),
# WEFT_BENCH_ADMISSION (1: first bring the local cluster up, deploy weft and measure pod
# creation through the API server, then stop the cluster; 0: skip that stage).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weft/target}
CARGO=${CARGO:-cargo}

DURATION=${WEFT_BENCH_DURATION:-20s}
ROUNDS=${WEFT_BENCH_ROUNDS:-3}
WARMUP=${WEFT_BENCH_WARMUP:-2s}
MAX_DURATION=${WEFT_BENCH_MAX_DURATION:-10s}
QPS=${WEFT_BENCH_QPS:-1000}
CONNECTIONS=8
PAYLOAD=1024
SCENARIOS=${WEFT_BENCH_SCENARIOS:-direct null null-threads weft weft-http weft-route weft-route-noretry weft-http-again weft-authz haproxy nginx haproxy-http nginx-http ghostunnel direct-h2 null-h2 weft-h2 haproxy-h2 gw-weft gw-nginx gw-haproxy gw-weft-tls gw-nginx-tls gw-haproxy-tls}
CP_SECONDS=${WEFT_BENCH_CP_SECONDS:-5}

NS_C=weft-bench-client
NS_S=weft-bench-server
C_IP=198.18.250.1
S_IP=198.18.250.2
SVC_IP=198.18.250.100 # the weft scenario's Service ClusterIP (known to the client proxy only)
APP_PORT=8080         # fortio echo server: direct and the relays' upstream
MESH_APP_PORT=8090    # a second echo server, behind the server-side weft-proxy
PORT_HAPROXY=9443 PORT_NGINX=9444 PORT_GHOSTUNNEL=9445 PORT_NULL=9446 # server-side relays
PORT_HAPROXY_HTTP=9447 PORT_NGINX_HTTP=9448 PORT_HAPROXY_H2=9449
LOCAL_HAPROXY=10443 LOCAL_NGINX=10444 LOCAL_GHOSTUNNEL=10445 LOCAL_NULL=10446 # client-side relays (plain)
LOCAL_HAPROXY_HTTP=10447 LOCAL_NGINX_HTTP=10448 LOCAL_HAPROXY_H2=10449
CLIENT_ID=spiffe://cluster.local/ns/bench/sa/client
SERVER_ID=spiffe://cluster.local/ns/bench/sa/server
SERVER_DNS=server.bench.svc.cluster.local
source "$here/gateway.sh" # issue 20's ingress rows (gw-*) and their ports
source "$here/route.sh"   # issue 19's route rows (weft-route*)

# CPU layout (WEFT_BENCH_LAYOUT):
#   pods   each side is a pod with its sidecar on its own core: the load generator and the
#          client-side proxy on CPU 0, the echo servers and the server-side proxy on CPU 1.
#          Every path crosses cores once each way, as two pods on two nodes do.
#   split  the load generator and the echo servers on CPU 0, every proxy on CPU 1: the direct
#          path never crosses cores, a proxied path crosses four times per request.
LAYOUT=${WEFT_BENCH_LAYOUT:-split}
if (($(nproc) < 2)); then
  LOAD_CPU=0 ECHO_CPU=0 CLIENT_PROXY_CPU=0 SERVER_PROXY_CPU=0
elif [[ $LAYOUT == pods ]]; then
  LOAD_CPU=0 CLIENT_PROXY_CPU=0 ECHO_CPU=1 SERVER_PROXY_CPU=1
elif [[ $LAYOUT == split ]]; then
  LOAD_CPU=0 ECHO_CPU=0 CLIENT_PROXY_CPU=1 SERVER_PROXY_CPU=1
else
  echo "[bench] error: WEFT_BENCH_LAYOUT=$LAYOUT: use pods or split" >&2
  exit 1
fi
PROXY_CPU=$SERVER_PROXY_CPU # the control-plane benchmark's core

work=${WEFT_BENCH_WORKDIR:-/tmp/weft-bench}
raw=$work/raw
results=$here/results

log() { echo "[bench] $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# === cleanup (also of a run that died) ===

declare -A PIDS=()

stop_pid() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  local name pid
  for name in "${!PIDS[@]}"; do stop_pid "${PIDS[$name]}"; done
  PIDS=()
  for ns in $NS_C $NS_S; do
    if [[ -e /var/run/netns/$ns ]]; then
      # Only what a run of this script started lives in these namespaces.
      for pid in $(ip netns pids "$ns" 2>/dev/null); do stop_pid "$pid"; done
      ip netns del "$ns" 2>/dev/null || true
    fi
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# === preconditions ===

[[ $(id -u) -eq 0 ]] || die "needs root (network namespaces, iptables, UID 1337)"
cluster_up=0
if ip link show weft0 >/dev/null 2>&1 || pgrep -x kube-apiserver >/dev/null; then cluster_up=1; fi
if ((cluster_up)) && [[ -z ${WEFT_BENCH_ALLOW_CLUSTER:-} ]]; then
  die "the local cluster is up (weft0 / kube-apiserver): stop it with make cluster-down first, the benchmark needs both cores to itself (WEFT_BENCH_ALLOW_CLUSTER=1 runs anyway and marks the results)"
fi

loadavg_at_start=$(cut -d' ' -f1-3 /proc/loadavg)
cleanup
rm -rf "$work"
mkdir -p "$raw" "$results"
chmod 755 "$work"

# === tools and builds ===

declare -A TOOL=()
while IFS='=' read -r k v; do [[ -n $k ]] && TOOL[$k]=$v; done < <(bash "$here/install-tools.sh")
FORTIO=${TOOL[fortio]:-}
[[ -x $FORTIO ]] || die "fortio could not be built (see the log above); it is the load generator"
SKIPPED=()
if [[ -z ${TOOL[ghostunnel]:-} ]]; then
  SKIPPED+=("ghostunnel: $(tail -1 "$HOME/.cache/weft-bench"/ghostunnel-*/build.log 2>/dev/null || echo 'build failed')")
fi

if [[ -n ${WEFT_BENCH_PROXY:-} ]]; then
  # A/B comparisons: a weft-proxy built elsewhere (the report names it).
  [[ -x $WEFT_BENCH_PROXY ]] || die "WEFT_BENCH_PROXY=$WEFT_BENCH_PROXY is not an executable"
  log "using the weft-proxy at $WEFT_BENCH_PROXY; building the control-plane benchmark"
  cp "$WEFT_BENCH_PROXY" "$work/weft-proxy"
else
  log "building weft-proxy (release) and the control-plane benchmark"
  (cd "$repo" && $CARGO build --release --locked --bin weft-proxy)
  cp "$CARGO_TARGET_DIR/release/weft-proxy" "$work/weft-proxy"
fi
if [[ -n ${WEFT_BENCH_NULL_RELAY:-} ]]; then
  # A prebuilt null relay (profiling runs while other builds hold cargo's lock).
  cp "$WEFT_BENCH_NULL_RELAY" "$work/weft-null-relay"
else
  (cd "$repo" && $CARGO build --release --locked -p weft-node-agent --bin weft-null-relay)
  cp "$CARGO_TARGET_DIR/release/weft-null-relay" "$work/weft-null-relay"
fi
chmod 755 "$work/weft-proxy" "$work/weft-null-relay"
CONTROL_PLANE=${WEFT_BENCH_CONTROL_PLANE:-1}
if [[ $CONTROL_PLANE != 0 ]]; then
  cp_bench=$(cd "$repo" && $CARGO bench --locked --bench control_plane --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*control_plane[^"]*\)".*/\1/p' | tail -1)
  [[ -x $cp_bench ]] || die "cannot find the control_plane benchmark executable"
fi

# === pod creation through the API server (the local cluster, then stopped again) ===
# The injector's cost as users meet it: dry-run pod creations in an enrolled and a plain
# namespace, alternating, through the real API server and both operator replicas.
if [[ ${WEFT_BENCH_ADMISSION:-1} == 1 ]]; then
  log "pod creation latency: local cluster up, weft deployed (make deploy)"
  (cd "$repo" && $CARGO build --release --locked -p weft-node-agent --bin weft-admission-bench)
  bash "$repo/e2e/cluster/up.sh" >/dev/null
  bash "$repo/e2e/scripts/deploy.sh" >/dev/null
  "$CARGO_TARGET_DIR/release/weft-admission-bench" --kubeconfig "$repo/e2e/.cluster/kubeconfig" \
    --out "$raw/admission.json" >/dev/null
  # Issue 24's issuer rows: CSR signing through Vault (-dev, loopback) and cert-manager (its own
  # CA issuer controllers on this cluster) beside the builtin CA, in one run (tests/issuer_bench.rs).
  log "issuers: CSR signing through builtin, Vault and cert-manager (tests/issuer_bench.rs)"
  (cd "$repo" && KUBECONFIG="$repo/e2e/.cluster/kubeconfig" WEFT_BENCH_ISSUERS_OUT="$raw/issuers.json" \
    $CARGO test --release --locked -p weft --test issuer_bench -- --ignored >"$work/issuers.log" 2>&1) ||
    SKIPPED+=("issuers: tests/issuer_bench.rs failed, see $work/issuers.log")
  # Issue 24's rotation row: p99 of meshed requests (a new mTLS connection each) during phase (b)
  # of a root rotation against the steady state before it (an ignored test of tests/rotation.rs).
  log "root rotation: p99 of mesh traffic in phase (b) against steady state (tests/rotation.rs)"
  (cd "$repo" && WEFT_BENCH_ROTATION_OUT="$raw/rotation.json" $CARGO test --locked -p weft-node-agent \
    --test rotation -- --ignored bench_added_p99 --test-threads=1 >"$work/rotation.log" 2>&1) ||
    SKIPPED+=("rotation: tests/rotation.rs bench_added_p99_of_mesh_traffic_during_phase_b failed, see $work/rotation.log")
  ((cluster_up)) || bash "$repo/e2e/cluster/down.sh" >/dev/null
else
  SKIPPED+=("pod creation: WEFT_BENCH_ADMISSION=0")
fi

# === control plane (before the namespaces: nothing else runs) ===

if [[ $CONTROL_PLANE == 1 ]]; then
  log "control plane: webhook reviews and CSR signing, ${CP_SECONDS}s each, then config convergence of 1,000 streams, on CPU $PROXY_CPU"
  (cd "$repo" && taskset -c "$PROXY_CPU" "$cp_bench" --seconds "$CP_SECONDS" --out "$raw/control_plane.json" >/dev/null)
elif [[ $CONTROL_PLANE != 0 ]]; then
  log "control plane: the $CONTROL_PLANE section only, on CPU $PROXY_CPU"
  (cd "$repo" && taskset -c "$PROXY_CPU" "$cp_bench" --seconds "$CP_SECONDS" --only "$CONTROL_PLANE" --out "$raw/control_plane.json" >/dev/null)
  SKIPPED+=("control plane: only $CONTROL_PLANE (WEFT_BENCH_CONTROL_PLANE)")
else
  SKIPPED+=("control plane: WEFT_BENCH_CONTROL_PLANE=0")
fi

# === certificates: one CA, a client and a server identity (P-256, SPIFFE URI SANs) ===

certs=$work/certs
mkdir -p "$certs"
(
  cd "$certs"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout ca.key -out ca.pem -subj "/O=weft bench/CN=weft bench root" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  leaf() { # NAME SAN
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" \
      -subj "/O=weft bench/CN=$1" -out "$1.csr" 2>/dev/null
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n' "$2" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
      -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    cat "$1.crt" "$1.key" >"$1.pem" # HAProxy's crt
    mkdir -p "$1-dir"              # weft-proxy's --cert-dir
    cp "$1.crt" "$1-dir/cert-chain.pem"
    cp "$1.key" "$1-dir/key.pem"
    cp ca.pem "$1-dir/root-cert.pem"
  }
  leaf client "URI:$CLIENT_ID"
  leaf server "URI:$SERVER_ID,DNS:$SERVER_DNS"
)
chmod -R a+rX "$certs"

# === namespaces ===

log "namespaces $NS_C ($C_IP) and $NS_S ($S_IP) on a veth pair"
ip netns add $NS_C
ip netns add $NS_S
ip link add wbench0 netns $NS_C type veth peer name wbench0 netns $NS_S
for pair in "$NS_C $C_IP" "$NS_S $S_IP"; do
  set -- $pair
  ip -n "$1" link set lo up
  ip -n "$1" addr add "$2/24" dev wbench0
  ip -n "$1" link set wbench0 up
  # Connection-per-request runs open tens of thousands of short connections.
  ip netns exec "$1" sysctl -qw net.ipv4.tcp_tw_reuse=1 "net.ipv4.ip_local_port_range=20000 65000"
done
# Capture as an injected pod has it. Client: no inbound capture, outbound captured except
# the direct and relay ports. Server: inbound capture of the meshed app's port only.
ip netns exec $NS_C "$work/weft-proxy" init --include-inbound-ports= \
  --exclude-outbound-ports "$APP_PORT,$PORT_HAPROXY,$PORT_NGINX,$PORT_GHOSTUNNEL,$PORT_NULL,$PORT_HAPROXY_HTTP,$PORT_NGINX_HTTP,$PORT_HAPROXY_H2,$GW_PORTS" >"$raw/init-client.log"
ip netns exec $NS_S "$work/weft-proxy" init --include-inbound-ports "$MESH_APP_PORT" >"$raw/init-server.log"

# === processes ===

# spawn NAME CPU NS CMD...: starts CMD pinned to CPU inside NS; `taskset` and `ip netns exec`
# exec in place, so the PID is the program's.
spawn() {
  local name=$1 cpu=$2 ns=$3
  shift 3
  taskset -c "$cpu" ip netns exec "$ns" "$@" </dev/null >"$raw/$name.log" 2>&1 &
  PIDS[$name]=$!
}

stop() {
  local name
  for name in "$@"; do
    [[ -n ${PIDS[$name]:-} ]] && stop_pid "${PIDS[$name]}"
    unset "PIDS[$name]"
  done
}

alive() { kill -0 "${PIDS[$1]}" 2>/dev/null || die "$1 exited: $(tail -5 "$raw/$1.log")"; }

now_ns() { date +%s%N; }
cpu_ticks() { # utime + stime of a process, in clock ticks
  local stat
  stat=$(<"/proc/$1/stat")
  stat=${stat##*) }
  set -- $stat
  echo $((${12} + ${13}))
}
rss_kb() {
  local k v _
  while read -r k v _; do [[ $k == VmRSS: ]] && { echo "$v"; return; }; done <"/proc/$1/status"
  echo 0
}
CLK_TCK=$(getconf CLK_TCK)

# http NS HOST:PORT PATH: the body of a GET, from inside NS (bash's /dev/tcp, no client needed).
http() {
  ip netns exec "$1" bash -c 'exec 3<>"/dev/tcp/${1%:*}/${1#*:}" || exit 1
    printf "GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n" "$2" >&3; cat <&3' _ "$2" "$3"
}

# wait_ready NAME NS T0: waits for weft-proxy's /healthz/ready; prints ms since T0 (ns).
wait_ready() {
  local name=$1 ns=$2 t0=$3 t1
  t1=$(ip netns exec "$ns" bash -c 'for _ in $(seq 4000); do
      if { exec 3<>/dev/tcp/127.0.0.1/15021; } 2>/dev/null; then
        printf "GET /healthz/ready HTTP/1.0\r\n\r\n" >&3
        read -r _ code _ <&3; exec 3<&-
        [[ $code == 200 ]] && { date +%s%N; exit 0; }
      fi
      sleep 0.002
    done; exit 1') || die "$name never became ready: $(tail -5 "$raw/$name.log")"
  echo $(((t1 - t0) / 1000000))
}

# load NAME URL ARGS...: fortio load from the client namespace on the load CPU. LOAD_ARGS:
# extra fortio flags of the current path (the gateway rows' Host header and CA).
LOAD_ARGS=()
load() {
  local name=$1 url=$2 h2=()
  shift 2
  # The -h2 paths: HTTP/2 with prior knowledge (h2c) on every connection.
  [[ $name == *-h2-* ]] && h2=(-h2)
  taskset -c "$LOAD_CPU" ip netns exec $NS_C "$FORTIO" load -quiet -loglevel Warning -c "$CONNECTIONS" \
    -payload-size "$PAYLOAD" -r 0.00001 -p "50,90,99,99.9" "${h2[@]}" "${LOAD_ARGS[@]}" "$@" -json "$raw/$name.json" "$url" \
    >"$raw/$name.load.log" 2>&1 || die "fortio load $name failed: $(tail -5 "$raw/$name.load.log")"
}

# smoke NAME URL: one request through the path, retried while the proxies come up.
smoke() {
  local h2=()
  [[ $1 == *-h2 ]] && h2=(-h2)
  for _ in $(seq 100); do
    if ip netns exec $NS_C "$FORTIO" curl -loglevel Error "${h2[@]}" "${LOAD_ARGS[@]}" -payload-size 16 "$2" >/dev/null 2>&1; then return; fi
    sleep 0.1
  done
  die "$1: no answer through $2"
}

# measured NAME KIND PROXIES... -- LOAD ARGS: runs `load` while it records each proxy's CPU
# seconds and largest RSS; appends `scenario kind proxy key value` lines to procs.tsv.
measured() {
  local name=$1 kind=$2
  shift 2
  local procs=()
  while [[ $1 != -- ]]; do procs+=("$1"); shift; done
  shift
  local -A before=()
  local p sampler=$raw/$name-$kind.rss t0 t1
  for p in "${procs[@]}"; do before[$p]=$(cpu_ticks "${PIDS[$p]}"); done
  rm -f "$sampler" "$sampler.stop" "$sampler.ready"
  # Sample RSS every 100 ms on the load CPU while the load runs: one process that sleeps in
  # between. A shell loop forks for every sample: 20-30 forks a second on the load
  # generator's CPU for a proxied path, against 10 for the direct one.
  local pairs=()
  for p in "${procs[@]}"; do pairs+=("$p=${PIDS[$p]}"); done
  taskset -c "$LOAD_CPU" python3 -c '
import os, sys, time
out, stop, *pairs = sys.argv[1:]
procs = [p.split("=", 1) for p in pairs]
top = {name: 0 for name, _ in procs}
open(out + ".ready", "w").close()
while not os.path.exists(stop):
    for name, pid in procs:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        top[name] = max(top[name], int(line.split()[1]))
                        break
        except OSError:
            pass
    time.sleep(0.1)
with open(out, "w") as f:
    f.writelines(f"{name} {top[name]}\n" for name, _ in procs)
' "$sampler" "$sampler.stop" "${pairs[@]}" &
  local sampler_pid=$!
  PIDS[sampler]=$sampler_pid # stopped by cleanup should the run die meanwhile
  local waited
  for ((waited = 0; waited < 500; waited++)); do
    [[ -e $sampler.ready ]] && break
    sleep 0.01
  done
  [[ -e $sampler.ready ]] || die "the RSS sampler (python3) did not start"
  t0=$(now_ns)
  load "$name-$kind" "$@"
  t1=$(now_ns)
  touch "$sampler.stop"
  wait "$sampler_pid"
  unset "PIDS[sampler]"
  for p in "${procs[@]}"; do
    alive "$p"
    local ticks=$(($(cpu_ticks "${PIDS[$p]}") - ${before[$p]}))
    printf '%s\t%s\t%s\tcpu_seconds\t%s\n' "$name" "$kind" "$p" "$(awk -v t="$ticks" -v h="$CLK_TCK" 'BEGIN{printf "%.3f", t/h}')"
    printf '%s\t%s\t%s\twall_seconds\t%s\n' "$name" "$kind" "$p" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", (b-a)/1e9}')"
    printf '%s\t%s\t%s\trss_max_kb\t%s\n' "$name" "$kind" "$p" "$(awk -v p="$p" '$1==p{print $2}' "$sampler")"
  done >>"$raw/procs.tsv"
}

record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$raw/procs.tsv"; }

# scenario NAME URL PROXIES...: warm-up, the fixed-rate run of this round (kind fixed-rN) and
# the full-speed run (kind max-rN: every round, so a peer comparison at full speed is paired
# by round like the fixed-rate one); in round 1 also idle RSS before it.
scenario() {
  local name=$1 url=$2
  shift 2
  local p
  smoke "$name" "$url"
  sleep 1
  if ((round == 1)); then
    for p in "$@"; do alive "$p"; record "$name" idle "$p" rss_kb "$(rss_kb "${PIDS[$p]}")"; done
  fi
  log "$name (round $round/$ROUNDS): warm-up $WARMUP, then $QPS rps for $DURATION"
  load "$name-warmup" "$url" -qps "$QPS" -uniform -t "$WARMUP"
  measured "$name" "fixed-r$round" "$@" -- "$url" -qps "$QPS" -uniform -t "$DURATION"
  log "$name (round $round/$ROUNDS): full speed for $MAX_DURATION"
  measured "$name" "max-r$round" "$@" -- "$url" -qps 0 -t "$MAX_DURATION"
}

# === the echo servers (CPU 0) ===

for port in $APP_PORT $MESH_APP_PORT; do
  spawn "echo-$port" "$ECHO_CPU" $NS_S "$FORTIO" server -loglevel Warning -http-port "$port" \
    -grpc-port disabled -redirect-port disabled -tcp-port disabled -udp-port disabled -ui-path ""
done
: >"$raw/procs.tsv"

# === scenarios ===

# bench_policies: issue 18's 10 AuthorizationPolicies of 10 rules, as the operator compiles
# them into the server's snapshot (src/authz/model.rs): a DENY naming principals of another
# namespace, then nine ALLOW policies whose rules each name a principal, GET/POST and a path
# prefix; only the last rule of the last one matches the client (POST /echo).
bench_policies() {
  python3 - "$CLIENT_ID" <<'PY'
import json, sys
client = sys.argv[1].removeprefix("spiffe://")
def rule(principal, prefix):
    return {"from": [[{"any_of": [{"principal": {"exact": principal}}]}]],
            "to": [[{"any_of": [{"method": {"exact": "GET"}}, {"method": {"exact": "POST"}}]},
                    {"any_of": [{"path": {"string": {"prefix": prefix}}}]}]]}
def policy(name, action, n, last=None):
    rules = [rule(f"cluster.local/ns/ns{n}/sa/sa{r}", f"/api/v{r}/") for r in range(10)]
    if last:
        rules[-1] = rule(*last)
    return {"name": f"bench/{name}", "action": action, "rules": rules}
policies = [policy("deny", "DENY", 99)]
policies += [policy(f"allow-{n}", "ALLOW", n, (client, "/echo") if n == 8 else None)
             for n in range(9)]
print(json.dumps(policies))
PY
}

# start_weft PROTOCOL [POLICIES [ROUTES]]: `tcp` relays bytes (the L4 figure, beside the TCP-mode
# peers); `http` terminates HTTP on both proxies (an endpoint per request, request metrics).
# POLICIES (JSON, default none) are the server proxy's authorization policies; ROUTES (JSON
# members, route.sh) are appended to the client's Service entry.
start_weft() {
  local protocol=$1 authz=${2:-[]} routes=${3:-}
  cat >"$work/server-snapshot.json" <<EOF
{"schemaVersion": 1, "version": "bench-server", "identity": "$SERVER_ID",
 "trustDomain": "cluster.local", "workload": {"name": "server", "namespace": "bench"},
 "inbound": {"defaultMode": "STRICT", "services": {"$MESH_APP_PORT": ["server.bench.svc.cluster.local"]},
             "protocols": {"$MESH_APP_PORT": "$protocol"}, "authz": $authz},
 "outbound": {"policy": "ALLOW_ANY"}}
EOF
  cat >"$work/client-snapshot.json" <<EOF
{"schemaVersion": 1, "version": "bench-client", "identity": "$CLIENT_ID",
 "trustDomain": "cluster.local", "workload": {"name": "client", "namespace": "bench"},
 "inbound": {"defaultMode": "PERMISSIVE"},
 "outbound": {"policy": "REGISTRY_ONLY", "services": [{
   "clusterIp": "$SVC_IP", "port": 80, "name": "server.bench.svc.cluster.local", "protocol": "$protocol",
   "endpoints": [{"ip": "$S_IP", "port": $MESH_APP_PORT, "meshed": true, "identity": "$SERVER_ID",
                  "mtlsModeForPort": "STRICT", "workload": {"name": "server", "namespace": "bench"}}]$routes}]}}
EOF
  chmod 644 "$work"/*-snapshot.json
  local side ns ip t0 ms cpu
  for side in server client; do
    [[ $side == server ]] && ns=$NS_S ip=$S_IP || ns=$NS_C ip=$C_IP
    t0=$(now_ns)
    [[ $side == server ]] && cpu=$SERVER_PROXY_CPU || cpu=$CLIENT_PROXY_CPU
    spawn "weft-$side" "$cpu" "$ns" setpriv --reuid=1337 --regid=1337 --clear-groups \
      "$work/weft-proxy" run --cert-dir "$certs/$side-dir" --snapshot-file "$work/$side-snapshot.json" \
      --pod-ip "$ip" --concurrency 1 --drain-duration 1s --log-level warn
    ms=$(wait_ready "weft-$side" "$ns" "$t0")
    record weft startup "weft-$side" ready_ms "$ms"
  done
}

# The server proxy's metrics must show mutual TLS from the client's identity.
check_weft_mtls() {
  local stats
  stats=$(http $NS_S 127.0.0.1:15020 /stats/prometheus)
  # L4 connections are counted as TCP, HTTP ones per request.
  if grep -Eq "istio_(tcp_connections_opened|requests)_total\{.*source_principal=\"$CLIENT_ID\".*connection_security_policy=\"mutual_tls\"" <<<"$stats" ||
    grep -Eq "istio_(tcp_connections_opened|requests)_total\{.*connection_security_policy=\"mutual_tls\".*source_principal=\"$CLIENT_ID\"" <<<"$stats"; then
    record weft check weft-server mtls_verified 1
  else
    die "the server proxy's metrics show no mutual TLS from $CLIENT_ID"
  fi
  grep '^weft_tls_handshakes_total' <<<"$stats" >"$raw/weft-server-handshakes.txt" || true
}

# check_weft_policies NAME: the bench policies are in force (a path no rule allows is 403
# through the same pair, the allowed POST /echo is 200), and an -h2 path really speaks HTTP/2
# to the client proxy.
check_weft_policies() {
  local code version h2=(--http1.1)
  [[ $1 == *-h2 ]] && h2=(--http2-prior-knowledge)
  for _ in $(seq 100); do
    code=$(ip netns exec $NS_C curl -s -o /dev/null -w '%{http_code}' "${h2[@]}" -d x "http://$SVC_IP/echo") || true
    [[ $code == 200 ]] && break
    sleep 0.1
  done
  [[ $code == 200 ]] || die "$1: POST /echo answered $code, not 200"
  code=$(ip netns exec $NS_C curl -s -o /dev/null -w '%{http_code}' "${h2[@]}" "http://$SVC_IP/not-allowed") || true
  [[ $code == 403 ]] || die "$1: GET /not-allowed answered $code, not 403: the bench policies are not in force"
  version=$(ip netns exec $NS_C curl -s -o /dev/null -w '%{http_version}' "${h2[@]}" -d x "http://$SVC_IP/echo") || true
  record "$1" check weft-server denied_403 1
  record "$1" check weft-client http_version "$version"
}

start_haproxy() {
  cat >"$work/haproxy-server.cfg" <<EOF
global
  nbthread 1
  maxconn 4096
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend tls_in
  bind $S_IP:$PORT_HAPROXY ssl crt $certs/server.pem ca-file $certs/ca.pem verify required
  default_backend app
backend app
  server app 127.0.0.1:$APP_PORT
EOF
  cat >"$work/haproxy-client.cfg" <<EOF
global
  nbthread 1
  maxconn 4096
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend plain_in
  bind 127.0.0.1:$LOCAL_HAPROXY
  default_backend tls_out
backend tls_out
  server server $S_IP:$PORT_HAPROXY ssl crt $certs/client.pem ca-file $certs/ca.pem verify required sni str($SERVER_DNS) verifyhost $SERVER_DNS
EOF
  spawn haproxy-server "$SERVER_PROXY_CPU" $NS_S haproxy -db -f "$work/haproxy-server.cfg"
  spawn haproxy-client "$CLIENT_PROXY_CPU" $NS_C haproxy -db -f "$work/haproxy-client.cfg"
}

nginx_conf() { # SIDE SERVER-BLOCK
  cat <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 16384;
pid $work/nginx-$1.pid;
error_log $raw/nginx-$1.error.log warn;
events { worker_connections 8192; }
stream {
  server {
$2
  }
}
EOF
}

# nginx's mutual TLS, the same for its stream (TCP) and its http (reverse proxy) pairs.
nginx_server_tls() {
  echo "    ssl_protocols TLSv1.3;
    ssl_certificate $certs/server.crt;
    ssl_certificate_key $certs/server.key;
    ssl_client_certificate $certs/ca.pem;
    ssl_verify_client on;"
}
nginx_client_tls() {
  echo "    proxy_ssl_protocols TLSv1.3;
    proxy_ssl_certificate $certs/client.crt;
    proxy_ssl_certificate_key $certs/client.key;
    proxy_ssl_trusted_certificate $certs/ca.pem;
    proxy_ssl_verify on;
    proxy_ssl_name $SERVER_DNS;
    proxy_ssl_server_name on;"
}

start_nginx() {
  nginx_conf server "    listen $S_IP:$PORT_NGINX ssl;
$(nginx_server_tls)
    proxy_pass 127.0.0.1:$APP_PORT;" >"$work/nginx-server.conf"
  nginx_conf client "    listen 127.0.0.1:$LOCAL_NGINX;
    proxy_pass $S_IP:$PORT_NGINX;
    proxy_ssl on;
$(nginx_client_tls)" >"$work/nginx-client.conf"
  spawn nginx-server "$SERVER_PROXY_CPU" $NS_S nginx -p "$work" -e "$raw/nginx-server.error.log" -c "$work/nginx-server.conf"
  spawn nginx-client "$CLIENT_PROXY_CPU" $NS_C nginx -p "$work" -e "$raw/nginx-client.error.log" -c "$work/nginx-client.conf"
}

# start_haproxy_http [h2]: the HAProxy pair in http mode; with h2, HTTP/2 end to end (h2c from the
# load generator, ALPN h2 on the mutual-TLS hop, h2c to the echo server): issue 18's h2 peer.
start_haproxy_http() {
  local name=haproxy-http port=$PORT_HAPROXY_HTTP local_port=$LOCAL_HAPROXY_HTTP front="" tls_alpn="" app_proto=""
  if [[ ${1:-} == h2 ]]; then
    name=haproxy-h2 port=$PORT_HAPROXY_H2 local_port=$LOCAL_HAPROXY_H2
    front=" proto h2" tls_alpn=" alpn h2" app_proto=" proto h2"
  fi
  local common="global
  nbthread 1
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s"
  cat >"$work/$name-server.cfg" <<EOF
$common
frontend tls_in
  bind $S_IP:$port ssl crt $certs/server.pem ca-file $certs/ca.pem verify required$tls_alpn
  default_backend app
backend app
  server app 127.0.0.1:$APP_PORT$app_proto
EOF
  cat >"$work/$name-client.cfg" <<EOF
$common
frontend plain_in
  bind 127.0.0.1:$local_port$front
  default_backend tls_out
backend tls_out
  server server $S_IP:$port ssl crt $certs/client.pem ca-file $certs/ca.pem verify required sni str($SERVER_DNS) verifyhost $SERVER_DNS$tls_alpn
EOF
  spawn $name-server "$SERVER_PROXY_CPU" $NS_S haproxy -db -f "$work/$name-server.cfg"
  spawn $name-client "$CLIENT_PROXY_CPU" $NS_C haproxy -db -f "$work/$name-client.cfg"
}

nginx_http_conf() { # SIDE UPSTREAM-SERVER LISTEN-BLOCK LOCATION-BLOCK
  mkdir -p "$work/nginx-$1-tmp"
  cat <<EOF
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 16384;
pid $work/nginx-http-$1.pid;
error_log $raw/nginx-http-$1.error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $work/nginx-$1-tmp/body;
  proxy_temp_path $work/nginx-$1-tmp/proxy;
  fastcgi_temp_path $work/nginx-$1-tmp/fastcgi;
  uwsgi_temp_path $work/nginx-$1-tmp/uwsgi;
  scgi_temp_path $work/nginx-$1-tmp/scgi;
  keepalive_requests 1000000;
  upstream up {
$2
    keepalive 32;
    keepalive_requests 1000000;
  }
  server {
$3
    location / {
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
$4
    }
  }
}
EOF
}

start_nginx_http() {
  nginx_http_conf server "    server 127.0.0.1:$APP_PORT;" "    listen $S_IP:$PORT_NGINX_HTTP ssl;
$(nginx_server_tls)" "      proxy_pass http://up;" >"$work/nginx-http-server.conf"
  nginx_http_conf client "    server $S_IP:$PORT_NGINX_HTTP;" "    listen 127.0.0.1:$LOCAL_NGINX_HTTP;" "      proxy_pass https://up;
$(nginx_client_tls)
      proxy_ssl_session_reuse on;" >"$work/nginx-http-client.conf"
  spawn nginx-http-server "$SERVER_PROXY_CPU" $NS_S nginx -p "$work" -e "$raw/nginx-http-server.error.log" -c "$work/nginx-http-server.conf"
  spawn nginx-http-client "$CLIENT_PROXY_CPU" $NS_C nginx -p "$work" -e "$raw/nginx-http-client.error.log" -c "$work/nginx-http-client.conf"
}

start_ghostunnel() {
  local gt=${TOOL[ghostunnel]}
  spawn ghostunnel-server "$SERVER_PROXY_CPU" $NS_S env GOMAXPROCS=1 "$gt" --quiet=conns server \
    --listen "$S_IP:$PORT_GHOSTUNNEL" --target "127.0.0.1:$APP_PORT" \
    --cert "$certs/server.crt" --key "$certs/server.key" --cacert "$certs/ca.pem" --allow-uri "$CLIENT_ID"
  spawn ghostunnel-client "$CLIENT_PROXY_CPU" $NS_C env GOMAXPROCS=1 "$gt" --quiet=conns client \
    --listen "127.0.0.1:$LOCAL_GHOSTUNNEL" --target "$S_IP:$PORT_GHOSTUNNEL" \
    --cert "$certs/client.crt" --key "$certs/client.key" --cacert "$certs/ca.pem" \
    --override-server-name "$SERVER_DNS" --verify-uri "$SERVER_ID"
}

start_null() { # NAME [--threads]
  spawn "$1-server" "$SERVER_PROXY_CPU" $NS_S "$work/weft-null-relay" ${2:-} "$S_IP:$PORT_NULL" "127.0.0.1:$APP_PORT"
  spawn "$1-client" "$CLIENT_PROXY_CPU" $NS_C "$work/weft-null-relay" ${2:-} "127.0.0.1:$LOCAL_NULL" "$S_IP:$PORT_NULL"
}

direct_url=http://$S_IP:$APP_PORT/echo
for round in $(seq "$ROUNDS"); do
for s in $SCENARIOS; do
  case $s in
    direct)
      scenario direct "$direct_url"
      ((round == 1)) || continue
      log "direct: a new connection per request, full speed for $MAX_DURATION"
      measured direct conns -- "$direct_url" -qps 0 -t "$MAX_DURATION" -keepalive=false
      ;;
    weft)
      start_weft tcp
      url=http://$SVC_IP/echo
      scenario weft "$url" weft-client weft-server
      if ((round == 1)); then
        log "weft: a new mTLS connection per request, full speed for $MAX_DURATION"
        measured weft conns weft-client weft-server -- "$url" -qps 0 -t "$MAX_DURATION" -keepalive=false
      fi
      check_weft_mtls
      stop weft-client weft-server
      ;;
    weft-http | weft-http-again)
      start_weft http
      scenario "$s" "http://$SVC_IP/echo" weft-client weft-server
      check_weft_mtls
      stop weft-client weft-server
      ;;
    weft-authz | weft-h2)
      start_weft http "$(bench_policies)"
      check_weft_policies "$s"
      scenario "$s" "http://$SVC_IP/echo" weft-client weft-server
      check_weft_mtls
      stop weft-client weft-server
      ;;
    direct-h2)
      scenario direct-h2 "$direct_url"
      ;;
    null-h2)
      start_null null-h2
      scenario null-h2 "http://127.0.0.1:$LOCAL_NULL/echo" null-h2-client null-h2-server
      stop null-h2-client null-h2-server
      ;;
    haproxy-http)
      start_haproxy_http
      scenario haproxy-http "http://127.0.0.1:$LOCAL_HAPROXY_HTTP/echo" haproxy-http-client haproxy-http-server
      stop haproxy-http-client haproxy-http-server
      ;;
    haproxy-h2)
      start_haproxy_http h2
      scenario haproxy-h2 "http://127.0.0.1:$LOCAL_HAPROXY_H2/echo" haproxy-h2-client haproxy-h2-server
      stop haproxy-h2-client haproxy-h2-server
      ;;
    nginx-http)
      start_nginx_http
      scenario nginx-http "http://127.0.0.1:$LOCAL_NGINX_HTTP/echo" nginx-http-client nginx-http-server
      stop nginx-http-client nginx-http-server
      ;;
    null | null-threads)
      [[ $s == null ]] && start_null null || start_null null-threads --threads
      scenario "$s" "http://127.0.0.1:$LOCAL_NULL/echo" "$s-client" "$s-server"
      stop "$s-client" "$s-server"
      ;;
    haproxy)
      start_haproxy
      scenario haproxy "http://127.0.0.1:$LOCAL_HAPROXY/echo" haproxy-client haproxy-server
      stop haproxy-client haproxy-server
      ;;
    nginx)
      start_nginx
      scenario nginx "http://127.0.0.1:$LOCAL_NGINX/echo" nginx-client nginx-server
      stop nginx-client nginx-server
      ;;
    gw-*) gateway_scenario "$s" ;;
    weft-route | weft-route-noretry) route_scenario "$s" ;;
    ghostunnel)
      if [[ -z ${TOOL[ghostunnel]:-} ]]; then log "ghostunnel: skipped (${SKIPPED[*]})"; continue; fi
      start_ghostunnel
      scenario ghostunnel "http://127.0.0.1:$LOCAL_GHOSTUNNEL/echo" ghostunnel-client ghostunnel-server
      stop ghostunnel-client ghostunnel-server
      ;;
    *) die "unknown scenario $s" ;;
  esac
done
done

# === report ===

{
  echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "cpus=$(nproc)"
  echo "cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
  echo "kernel=$(uname -r)"
  echo "loadavg_at_start=$loadavg_at_start"
  echo "loadavg_at_end=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "cluster_running=$cluster_up"
  echo "weft_commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  [[ -n ${WEFT_BENCH_PROXY:-} ]] && echo "weft_proxy_binary=$WEFT_BENCH_PROXY"
  echo "fortio=$("$FORTIO" version 2>&1 | head -1)"
  echo "haproxy=$(haproxy -v 2>&1 | head -1)"
  echo "nginx=$(nginx -v 2>&1 | head -1)"
  echo "ghostunnel=$([[ -n ${TOOL[ghostunnel]:-} ]] && "${TOOL[ghostunnel]}" --version 2>&1 | head -1)"
  echo "openssl=$(openssl version)"
  echo "qps=$QPS"
  echo "connections=$CONNECTIONS"
  echo "payload_bytes=$PAYLOAD"
  echo "duration=$DURATION"
  echo "rounds=$ROUNDS"
  echo "max_duration=$MAX_DURATION"
  echo "layout=$LAYOUT"
  echo "load_cpu=$LOAD_CPU"
  echo "echo_cpu=$ECHO_CPU"
  echo "client_proxy_cpu=$CLIENT_PROXY_CPU"
  echo "server_proxy_cpu=$SERVER_PROXY_CPU"
  for s in "${SKIPPED[@]}"; do echo "skipped=$s"; done
} >"$raw/meta.env"

readme_args=(--readme "$repo/README.md")
[[ -n ${WEFT_BENCH_NO_README:-} ]] && readme_args=()
PYTHONDONTWRITEBYTECODE=1 python3 "$here/report.py" --raw "$raw" --out "$results/latest.json" "${readme_args[@]}"
log "raw measurements and logs: $raw"
