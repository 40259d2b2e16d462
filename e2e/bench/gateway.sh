# Issue 20's ingress rows of `make bench`, sourced by run.sh (it uses run.sh's spawn, scenario,
# measured, record, wait_ready, nginx_http_conf and its variables): one reverse proxy in the
# server namespace in front of the echo server, as an ingress gateway stands in front of a
# Service, for weft-proxy's gateway mode, nginx and HAProxy alike:
#   gw-weft, gw-nginx, gw-haproxy              plain HTTP/1.1 front (keep-alive), plain upstream
#   gw-weft-tls, gw-nginx-tls, gw-haproxy-tls  the same with TLS terminated on the front
# Each proxy runs one worker on the proxies' CPU, keeps upstream connections alive, logs no
# access lines and listens on 198.18.250.2 (weft binds its listeners' ports on every address of
# the server namespace, which holds only that address and loopback). The load goes to
# https?://shop.bench.test:<port>/echo, dialled at 198.18.250.2 (weft routes by that Host; the
# TLS rows also send it as SNI and verify the certificate against the bench CA). In round 1 each -tls row also runs at full
# speed without keep-alive: every request a new TLS handshake (TLS 1.3, P-256 certificate,
# no session resumption: fortio keeps no session cache).

GW_HOST=shop.bench.test
GW_ID=spiffe://cluster.local/ns/bench/sa/gateway
GW_UPSTREAM=upstream.bench.svc.cluster.local
GW_UPSTREAM_IP=198.18.250.101 # the Service's ClusterIP: a key in the snapshot, never dialled
PORT_GW_WEFT=9449 PORT_GW_WEFT_TLS=9450 PORT_GW_NGINX=9451 PORT_GW_NGINX_TLS=9452
PORT_GW_HAPROXY=9453 PORT_GW_HAPROXY_TLS=9454
GW_PORTS=$PORT_GW_WEFT,$PORT_GW_WEFT_TLS,$PORT_GW_NGINX,$PORT_GW_NGINX_TLS,$PORT_GW_HAPROXY,$PORT_GW_HAPROXY_TLS

# gw_certs: the served certificate (DNS:shop.bench.test, for every TLS front) and the gateway's
# own mesh identity (weft-proxy's --cert-dir), both from the bench CA; made once per run.
gw_certs() {
  [[ -e $certs/gw-served.pem ]] && return
  (
    cd "$certs"
    leaf_of() { # NAME SAN
      openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" \
        -subj "/O=weft bench/CN=$1" -out "$1.csr" 2>/dev/null
      printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n' "$2" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
      cat "$1.crt" "$1.key" >"$1.pem" # HAProxy's crt
    }
    leaf_of gw-served "DNS:$GW_HOST"
    leaf_of gw-mesh "URI:$GW_ID"
    mkdir -p gw-mesh-dir
    cp gw-mesh.crt gw-mesh-dir/cert-chain.pem
    cp gw-mesh.key gw-mesh-dir/key.pem
    cp ca.pem gw-mesh-dir/root-cert.pem
  )
  chmod -R a+rX "$certs"
}

# start_gw_weft: `weft-proxy gateway` from files: a snapshot whose gateway table has one
# listener per front (the TLS one with the served certificate, as a Gateway's credentialName
# Secret gives it), each routing shop.bench.test to a Service whose only endpoint is the echo
# server, plaintext (an endpoint without mesh identity), as an ingress in front of an unmeshed
# backend.
start_gw_weft() {
  gw_certs
  python3 - "$work/gw-snapshot.json" "$certs/gw-served.crt" "$certs/gw-served.key" <<PY
import json, sys
out, crt, key = sys.argv[1:4]
routes = [{"name": "bench/shop", "destinations": [
    {"service": "$GW_UPSTREAM", "port": $APP_PORT, "weight": 100}]}]
vhosts = [{"domains": ["$GW_HOST"], "routes": routes}]
served = {"gateway": "bench/shop", "hosts": ["$GW_HOST"],
          "certChain": open(crt).read(), "privateKey": open(key).read()}
snapshot = {
    "schemaVersion": 1, "version": "bench-gateway", "identity": "$GW_ID",
    "trustDomain": "cluster.local", "workload": {"name": "gateway", "namespace": "bench"},
    "inbound": {"defaultMode": "PERMISSIVE"},
    "outbound": {"policy": "ALLOW_ANY", "services": [{
        "clusterIp": "$GW_UPSTREAM_IP", "port": $APP_PORT, "name": "$GW_UPSTREAM", "protocol": "http",
        "endpoints": [{"ip": "127.0.0.1", "port": $APP_PORT, "meshed": False}]}]},
    "gateway": {"listeners": [
        {"port": $PORT_GW_WEFT, "gateways": ["bench/shop"], "virtualHosts": vhosts},
        {"port": $PORT_GW_WEFT_TLS, "gateways": ["bench/shop"], "virtualHosts": vhosts,
         "tls": [served]}]},
}
with open(out, "w") as f:
    json.dump(snapshot, f)
PY
  chmod 644 "$work/gw-snapshot.json"
  local t0 ms
  t0=$(now_ns)
  spawn gw-weft "$SERVER_PROXY_CPU" $NS_S setpriv --reuid=1337 --regid=1337 --clear-groups \
    "$work/weft-proxy" gateway --cert-dir "$certs/gw-mesh-dir" --snapshot-file "$work/gw-snapshot.json" \
    --pod-ip "$S_IP" --concurrency 1 --drain-duration 1s --log-level warn
  ms=$(wait_ready gw-weft $NS_S "$t0")
  record gw-weft startup gw-weft ready_ms "$ms"
}

start_gw_nginx() {
  gw_certs
  nginx_http_conf gw "    server 127.0.0.1:$APP_PORT;" "    listen $S_IP:$PORT_GW_NGINX;
    listen $S_IP:$PORT_GW_NGINX_TLS ssl;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate $certs/gw-served.crt;
    ssl_certificate_key $certs/gw-served.key;" "      proxy_pass http://up;" >"$work/nginx-gw.conf"
  spawn gw-nginx "$SERVER_PROXY_CPU" $NS_S nginx -p "$work" -e "$raw/nginx-http-gw.error.log" -c "$work/nginx-gw.conf"
}

start_gw_haproxy() {
  gw_certs
  cat >"$work/haproxy-gw.cfg" <<EOF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
frontend ingress
  bind $S_IP:$PORT_GW_HAPROXY
  bind $S_IP:$PORT_GW_HAPROXY_TLS ssl crt $certs/gw-served.pem
  default_backend app
backend app
  server app 127.0.0.1:$APP_PORT
EOF
  spawn gw-haproxy "$SERVER_PROXY_CPU" $NS_S haproxy -db -f "$work/haproxy-gw.cfg"
}

# gateway_scenario NAME: one ingress row (gw-<proxy>[-tls]). The proxy serves both fronts; a
# row loads one of them. The -tls rows then measure new handshakes per second (round 1).
gateway_scenario() {
  local name=$1 proxy=${1%-tls} port url
  proxy=${proxy#gw-}
  case $name in
    gw-weft) port=$PORT_GW_WEFT ;;
    gw-weft-tls) port=$PORT_GW_WEFT_TLS ;;
    gw-nginx) port=$PORT_GW_NGINX ;;
    gw-nginx-tls) port=$PORT_GW_NGINX_TLS ;;
    gw-haproxy) port=$PORT_GW_HAPROXY ;;
    gw-haproxy-tls) port=$PORT_GW_HAPROXY_TLS ;;
    *) die "unknown gateway scenario $name" ;;
  esac
  "start_gw_$proxy"
  # fortio dials 198.18.250.2 for shop.bench.test (-resolve): the name is the Host header and,
  # on TLS, the SNI and the name the certificate is verified for.
  LOAD_ARGS=(-resolve "$S_IP")
  if [[ $name == *-tls ]]; then
    url=https://$GW_HOST:$port/echo
    LOAD_ARGS+=(-cacert "$certs/ca.pem")
  else
    url=http://$GW_HOST:$port/echo
  fi
  scenario "$name" "$url" "gw-$proxy"
  if [[ $name == *-tls ]] && ((round == 1)); then
    log "$name: a new TLS handshake per request, full speed for $MAX_DURATION"
    measured "$name" conns "gw-$proxy" -- "$url" -qps 0 -t "$MAX_DURATION" -keepalive=false
  fi
  LOAD_ARGS=()
  stop "gw-$proxy"
}
