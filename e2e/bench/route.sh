# Issue 19's route rows, sourced by run.sh: the weft-proxy HTTP pair (as `weft-http`) whose
# client snapshot routes the Service through a table of 20 match rules the bench request never
# matches (header + path prefix each, the first one naming a subset that does not exist) and
# a last 90/10 weighted catch-all over two subsets, so every request tries every rule and
# then rolls the weight: what a VirtualService / TrafficSplit table costs per request.
#   weft-route          the table, the catch-all without `retries` (Istio's default policy:
#                       2 retries, the request body recorded while it streams for a replay)
#   weft-route-noretry  the same table, the catch-all with `retries: {attempts: 0}` (off)
# report.py compares weft-route with weft-http (the plain L7 pair) and weft-route-noretry with
# weft-route, paired by round.

# bench_routes ATTEMPTS: the client Service's `subsets` and `http` (JSON members to append to
# it); ATTEMPTS empty keeps Istio's default retries on the catch-all, a number sets them.
bench_routes() {
  python3 - "$1" <<'PY'
import json, sys
attempts = sys.argv[1]
def dest(subset, weight):
    return {"service": "server.bench.svc.cluster.local", "port": 80, "subset": subset,
            "weight": weight}
# Rule 0 names a subset no DestinationRule defines: a request carrying x-bench-nr gets 503 NR,
# which proves the table is in force (check_route_table).
routes = [{"name": "bench/nr", "matches": [{"headers": {"x-bench-nr": {"exact": "1"}}}],
           "destinations": [dest("missing", 100)]}]
routes += [{"name": f"bench/rule-{i}",
            "matches": [{"uri": {"prefix": f"/api/v{i}/"},
                         "headers": {"end-user": {"exact": f"user-{i}"}}}],
            "destinations": [dest("v2", 100)]} for i in range(1, 20)]
canary = {"name": "bench/canary", "destinations": [dest("v1", 90), dest("v2", 10)]}
if attempts:
    canary["retries"] = {"attempts": int(attempts), "on": []}
routes.append(canary)
subsets = {"v1": [0], "v2": [0]}
print(', "subsets": ' + json.dumps(subsets) + ', "http": ' + json.dumps(routes))
PY
}

# check_route_table NAME: the routes are in force (x-bench-nr is answered 503 by the client
# proxy, the bench request 200).
check_route_table() {
  local code
  for _ in $(seq 100); do
    code=$(ip netns exec $NS_C curl -s -o /dev/null -w '%{http_code}' -d x "http://$SVC_IP/echo") || true
    [[ $code == 200 ]] && break
    sleep 0.1
  done
  [[ $code == 200 ]] || die "$1: POST /echo answered $code, not 200"
  code=$(ip netns exec $NS_C curl -s -o /dev/null -w '%{http_code}' -H 'x-bench-nr: 1' -d x "http://$SVC_IP/echo") || true
  [[ $code == 503 ]] || die "$1: the request for the missing subset answered $code, not 503: the route table is not in force"
  record "$1" check weft-client missing_subset_503 1
}

route_scenario() { # NAME
  local attempts=
  [[ $1 == weft-route-noretry ]] && attempts=0
  start_weft http "[]" "$(bench_routes "$attempts")"
  check_route_table "$1"
  scenario "$1" "http://$SVC_IP/echo" weft-client weft-server
  check_weft_mtls
  stop weft-client weft-server
}
