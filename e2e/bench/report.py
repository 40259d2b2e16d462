#!/usr/bin/env python3
"""Turns the raw measurements of e2e/bench/run.sh into results/latest.json and a markdown
table (printed, and put into README.md between the bench markers). Standard library only.

Raw inputs (in --raw): fortio's JSON per run (<scenario>-<kind>.json), procs.tsv (scenario,
kind, process, key, value), control_plane.json (cargo bench --bench control_plane: webhook,
CSR and config convergence) and meta.env (machine, versions, settings).
"""

import argparse
import json
from statistics import median
import os
import re
import sys

SCENARIOS = ["direct", "null", "null-threads", "weft", "weft-http", "weft-route", "weft-route-noretry",
             "weft-http-again", "weft-authz", "haproxy", "nginx",
             "haproxy-http", "nginx-http", "ghostunnel", "direct-h2", "null-h2", "weft-h2",
             "haproxy-h2", "gw-weft", "gw-nginx", "gw-haproxy", "gw-weft-tls", "gw-nginx-tls", "gw-haproxy-tls"]
FLOORS = ("null", "null-threads", "null-h2")
# Issue 20's ingress rows (gateway.sh): one proxy in front of the echo server, not a pair.
GATEWAY_PEERS = ("weft", "nginx", "haproxy")
GATEWAY = tuple(f"gw-{p}{tls}" for tls in ("", "-tls") for p in GATEWAY_PEERS)
LABELS = {
    "direct": "direct (no proxy)",
    "null": "null relay pair (plaintext copy, one event loop)",
    "null-threads": "null relay pair (plaintext copy, blocking threads)",
    "weft": "**weft-proxy pair** (mTLS, iptables capture)",
    "weft-http": "**weft-proxy pair, HTTP** (both proxies terminate HTTP/1.1)",
    "haproxy": "HAProxy pair (TLS relay, mutual)",
    "nginx": "nginx stream pair (TLS relay, mutual)",
    "ghostunnel": "ghostunnel pair (mTLS)",
    "weft-authz": "**weft-proxy pair, HTTP + 10 policies × 10 rules** (every rule tried)",
    "weft-route": "**weft-proxy pair, HTTP + 20 match rules then a 90/10 route** (Istio's default retries)",
    "weft-route-noretry": "**weft-proxy pair, HTTP + the same routes, retries off** (attempts 0)",
    "weft-http-again": "weft-proxy pair, HTTP, run again after the route rows (the A/A control)",
    "haproxy-http": "HAProxy pair, HTTP mode (mutual TLS, keep-alive upstreams)",
    "nginx-http": "nginx pair, HTTP reverse proxy (mutual TLS, keep-alive upstreams)",
    "direct-h2": "direct, HTTP/2 (h2c, no proxy)",
    "null-h2": "null relay pair, HTTP/2 (h2c through two bare hops)",
    "weft-h2": "**weft-proxy pair, HTTP/2 + 10 policies × 10 rules**",
    "haproxy-h2": "HAProxy pair, HTTP mode, HTTP/2 end to end (mutual TLS with ALPN h2)",
    "gw-weft": "**weft-proxy gateway**",
    "gw-nginx": "nginx",
    "gw-haproxy": "HAProxy",
    "gw-weft-tls": "**weft-proxy gateway**",
    "gw-nginx-tls": "nginx",
    "gw-haproxy-tls": "HAProxy",
}


def baselines(s):
    """The direct path and the null floor a path is compared with: the h2c ones for HTTP/2; an
    ingress row (one hop) has no floor (the null floor is a pair of hops)."""
    if s in GATEWAY:
        return ("direct", None)
    return ("direct-h2", "null-h2") if s.endswith("-h2") else ("direct", "null")
START = "<!-- bench:start -->"
END = "<!-- bench:end -->"

# SPEC §14, as (key, what, target text, predicate on the measured value).
TARGETS = [
    ("added_p99_ms", "proxy pair, mTLS, 1 KB HTTP at 1,000 rps: added p99 vs direct", "≤ 0.15 ms",
     lambda v: v <= 0.15),
    ("cpu_per_1000rps", "proxy CPU per 1,000 rps (busier proxy of the pair)", "≤ 0.05 vCPU",
     lambda v: v <= 0.05),
    ("rss_idle_mb", "proxy RSS idle (larger of the pair)", "≤ 8 MB", lambda v: v <= 8),
    ("rss_loaded_mb", "proxy RSS at 1,000 rps (larger of the pair)", "≤ 15 MB", lambda v: v <= 15),
    ("mtls_conns_per_proxy_core", "new mTLS connections per proxy core", "≥ 1,000/s",
     lambda v: v >= 1000),
    ("webhook_reviews_per_s", "webhook: admission reviews per core", "≥ 1,000/s",
     lambda v: v >= 1000),
    ("webhook_p99_ms", "webhook: review p99", "≤ 5 ms", lambda v: v <= 5),
    ("csr_per_s", "CSR signing per core", "≥ 1,000/s", lambda v: v >= 1000),
    ("authz_p50_ns", "authorization: one request against 10 policies / 100 rules, every rule tried, median",
     "≤ 1,000 ns", lambda v: v <= 1000),
    ("ready_ms", "proxy ready after start (cert + config from files)", "≤ 100 ms",
     lambda v: v <= 100),
    # Issue 18: the HTTP pair with 10 policies of 10 rules, HTTP/1.1 keep-alive and h2.
    ("authz_h1_beyond_null_p99_ms", "HTTP/1.1 pair + 10×10 policies: added p99 beyond the null floor",
     "≤ 0.1 ms", lambda v: v <= 0.1),
    ("authz_h2_beyond_null_p99_ms", "h2 pair + 10×10 policies: added p99 beyond the h2c null floor",
     "≤ 0.1 ms", lambda v: v <= 0.1),
    ("authz_h1_cpu_vs_l4", "HTTP/1.1 pair + policies: CPU per 1,000 rps ÷ weft's L4 figure (busier proxy)",
     "≤ 1.2×", lambda v: v <= 1.2),
    ("authz_h2_cpu_vs_l4", "h2 pair + policies: CPU per 1,000 rps ÷ weft's L4 figure (busier proxy)",
     "≤ 1.2×", lambda v: v <= 1.2),
    ("authz_rss_mb", "HTTP pairs + policies: RSS at 1,000 rps (largest proxy, h1 and h2)", "≤ 10 MB",
     lambda v: v <= 10),
]


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def fortio(raw, name):
    """Latency percentiles (ms), achieved rate and errors of one fortio run."""
    data = load_json(os.path.join(raw, name + ".json"))
    if data is None:
        return None
    hist = data["DurationHistogram"]
    pct = {p["Percentile"]: p["Value"] * 1000 for p in hist.get("Percentiles") or []}
    count = hist["Count"]
    ok = data.get("RetCodes", {}).get("200", 0)
    return {
        "p50_ms": round(pct.get(50, 0), 4),
        "p90_ms": round(pct.get(90, 0), 4),
        "p99_ms": round(pct.get(99, 0), 4),
        "p999_ms": round(pct.get(99.9, 0), 4),
        "avg_ms": round(hist["Avg"] * 1000, 4),
        "requests": count,
        "errors": count - ok,
        "rps": round(data["ActualQPS"], 1),
    }


def procs(raw):
    out = {}
    path = os.path.join(raw, "procs.tsv")
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 5:
                continue
            scenario, kind, proc, key, value = parts
            out.setdefault(scenario, {}).setdefault(kind, {}).setdefault(proc, {})[key] = float(value)
    return out


def meta(raw):
    m, skipped = {}, []
    with open(os.path.join(raw, "meta.env")) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            if k == "skipped":
                skipped.append(v)
            else:
                m[k] = v
    return m, skipped


def vcpu(p):
    """vCPU used (CPU seconds per wall second)."""
    return p["cpu_seconds"] / p["wall_seconds"] if p.get("wall_seconds") else 0.0


def build(raw):
    m, skipped = meta(raw)
    pr = procs(raw)
    cp = load_json(os.path.join(raw, "control_plane.json")) or {}
    result = {
        "date": m.get("date"),
        "machine": {k: m.get(k) for k in ("cpus", "cpu_model", "kernel", "loadavg_at_start",
                                             "loadavg_at_end")},
        "local_cluster_running": m.get("cluster_running") == "1",
        "versions": {k: m.get(k) for k in ("weft_commit", "weft_proxy_binary", "fortio",
                                            "haproxy", "nginx", "ghostunnel", "openssl")
                     if m.get(k) is not None},
        "load": {
            "generator": "fortio load, open loop (-uniform), HTTP/1.1 keep-alive",
            "qps": int(m.get("qps", 0)),
            "connections": int(m.get("connections", 0)),
            "payload_bytes": int(m.get("payload_bytes", 0)),
            "duration": m.get("duration"),
            "rounds": int(m.get("rounds", 1)),
            "max_duration": m.get("max_duration"),
            "layout": m.get("layout", "split"),
            "cpus": {k: m.get(f"{k}_cpu") for k in ("load", "echo", "client_proxy", "server_proxy")},
        },
        "scenarios": {},
        "max_rps": {},
        "skipped": skipped,
    }
    nrounds = int(m.get("rounds", 1))
    runs = {s: [fortio(raw, f"{s}-fixed-r{r}") for r in range(1, nrounds + 1)]
            for s in SCENARIOS}
    for s in SCENARIOS:
        base, floor = baselines(s)
        direct, null = runs[base], runs[floor] if floor else [None] * nrounds
        rounds = [(r, f) for r, f in enumerate(runs[s]) if f is not None]
        if not rounds:
            continue
        entry = {k: round(median(f[k] for _, f in rounds), 4)
                 for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "avg_ms", "rps")}
        entry["requests"] = sum(f["requests"] for _, f in rounds)
        entry["errors"] = sum(f["errors"] for _, f in rounds)
        entry["rounds"] = len(rounds)
        for q in ("p50", "p90", "p99"):
            # Paired by round: each round's direct run saw the machine as this path did.
            diffs = [f[f"{q}_ms"] - direct[r][f"{q}_ms"]
                     for r, f in rounds if s != base and direct[r] is not None]
            entry[f"added_{q}_ms"] = round(median(diffs), 4) if diffs else None
            entry[f"added_{q}_ms_by_round"] = [round(d, 4) for d in diffs] if diffs else None
            # What the path adds beyond the null relay pair (two bare user-space hops), paired
            # the same way: the part of the added latency that is the proxy's own.
            beyond = [f[f"{q}_ms"] - null[r][f"{q}_ms"]
                      for r, f in rounds if s != base and s not in FLOORS and null[r] is not None]
            entry[f"beyond_null_{q}_ms"] = round(median(beyond), 4) if beyond else None
        # Full speed, every round (max-rN): the median, and the rounds for a paired reading.
        maxes = [m["rps"] for r in range(nrounds) for m in [fortio(raw, f"{s}-max-r{r + 1}")] if m]
        entry["max_rps"] = round(median(maxes), 1) if maxes else None
        entry["max_rps_by_round"] = maxes or None
        if maxes:
            result["max_rps"][s] = entry["max_rps"]
        proxies = {}
        sp = pr.get(s, {})
        names = sorted({n for r, _ in rounds for n in sp.get(f"fixed-r{r + 1}", {})})
        for name in names:
            per_round, rss = [], []
            for r, f in rounds:
                p = sp.get(f"fixed-r{r + 1}", {}).get(name)
                if p is None:
                    continue
                rate = f["rps"] / 1000 if f["rps"] else 1
                per_round.append(vcpu(p) / rate)
                rss.append(p.get("rss_max_kb", 0))
            d = {
                "cpu_per_1000rps": round(median(per_round), 4),
                "cpu_per_1000rps_by_round": [round(c, 4) for c in per_round],
                "rss_idle_mb": round(sp.get("idle", {}).get(name, {}).get("rss_kb", 0) / 1024, 2),
                "rss_loaded_mb": round(max(rss) / 1024, 2),
            }
            at_max = [vcpu(m) for r in range(nrounds) for m in [sp.get(f"max-r{r + 1}", {}).get(name)] if m]
            if at_max:
                d["vcpu_at_max_rps"] = round(median(at_max), 3)
            ready = sp.get("startup", {}).get(name, {}).get("ready_ms")
            if ready is not None:
                d["ready_ms"] = ready
            proxies[name] = d
        if proxies:
            entry["proxies"] = proxies
            for key in ("cpu_per_1000rps", "rss_idle_mb", "rss_loaded_mb"):
                entry[key] = max(d[key] for d in proxies.values())
        result["scenarios"][s] = entry

    conns = fortio(raw, "weft-conns")
    if conns:
        busiest = max((vcpu(p) for p in pr.get("weft", {}).get("conns", {}).values()), default=0)
        result["mtls_conns_per_s"] = conns["rps"]
        result["mtls_conns"] = {
            "per_s": conns["rps"],
            "errors": conns["errors"],
            "busier_proxy_vcpu": round(busiest, 3),
            "per_proxy_core": round(conns["rps"] / busiest, 1) if busiest else None,
            "p50_ms": conns["p50_ms"],
            "p99_ms": conns["p99_ms"],
            "note": "fortio -keepalive=false: every request is a new TCP connection to the client "
                    "proxy and a new mTLS connection between the proxies (rustls defaults, "
                    "session resumption included)",
        }
        dconns = fortio(raw, "direct-conns")
        if dconns:
            result["mtls_conns"]["direct_tcp_conns_per_s"] = dconns["rps"]
    wh, csr, conv = cp.get("webhook"), cp.get("csr"), cp.get("convergence")
    if wh:
        result["webhook"] = wh
    if csr:
        result["csr"] = csr
    if conv:
        result["config_convergence"] = conv
    if cp.get("authz"):
        result["authz"] = cp["authz"]
    if cp.get("route_eval"):
        result["route_eval"] = cp["route_eval"]
    if cp.get("served"):
        result["served"] = cp["served"]
    result["control_plane_cpus"] = cp.get("cpus_allowed")
    adm = load_json(os.path.join(raw, "admission.json"))
    if adm:
        result["pod_admission"] = adm
    iss = load_json(os.path.join(raw, "issuers.json"))
    if iss:
        result["issuers"] = iss
    rot = load_json(os.path.join(raw, "rotation.json"))
    if rot:
        result["rotation"] = rot
    gw = gateway_results(raw, pr, result)
    if gw:
        result["gateway"] = gw
    result["targets"] = targets(result)
    return result


def gateway_results(raw, pr, result):
    """Issue 20's ingress figures beside the scenarios' own: per TLS front the new handshakes
    per second and per core of the proxy (fortio -keepalive=false: every request a new TLS
    connection, no resumption), and per row the full-speed rate per vCPU the proxy used (the
    load generator shares the other core, so max rps alone is partly the client's)."""
    out = {}
    for s in GATEWAY:
        e = result["scenarios"].get(s)
        if e is None:
            continue
        mp = (e.get("proxies") or {}).get(f"gw-{s.removeprefix('gw-').removesuffix('-tls')}", {})
        v = mp.get("vcpu_at_max_rps")
        row = {"max_rps": e.get("max_rps"), "vcpu_at_max_rps": v,
               "max_rps_per_proxy_vcpu": round(e["max_rps"] / v, 1) if v and e.get("max_rps") else None}
        conns = fortio(raw, f"{s}-conns")
        if conns:
            p = next(iter(pr.get(s, {}).get("conns", {}).values()), None)
            busy = vcpu(p) if p else 0
            row["handshakes"] = {
                "per_s": conns["rps"], "errors": conns["errors"], "proxy_vcpu": round(busy, 3),
                "per_proxy_core": round(conns["rps"] / busy, 1) if busy else None,
                "p50_ms": conns["p50_ms"], "p99_ms": conns["p99_ms"]}
        out[s] = row
    return out


def paired_p99(r, path, base):
    """Median over rounds of path's p99 minus base's p99 in the same round (both measured
    against the same direct run, so the direct path cancels), and the per-round list. `base`
    may be a tuple of paths: their mean in each round."""
    bases = base if isinstance(base, tuple) else (base,)
    a = (r["scenarios"].get(path) or {}).get("added_p99_ms_by_round")
    bs = [(r["scenarios"].get(b) or {}).get("added_p99_ms_by_round") for b in bases]
    if not a or not all(bs) or any(len(b) != len(a) for b in bs):
        return None, None
    diffs = [x - sum(ys) / len(ys) for x, ys in zip(a, zip(*bs))]
    return round(median(diffs), 4), [round(d, 4) for d in diffs]


def aa_floor(r):
    """The A/A control: median over rounds of |weft-http-again - weft-http| at p99, what two
    runs of one path differ by on this machine in this run. None without the control."""
    _, by_round = paired_p99(r, "weft-http-again", "weft-http")
    if not by_round:
        return None, None
    return round(median(abs(d) for d in by_round), 4), by_round


def route_targets(r):
    """Issue 19's route rows (route.sh), each against its pair in the same run. With the A/A
    control (weft-http-again) the route row is compared with the mean of the two plain runs
    around it, and both rows carry the control's difference as the floor of what this run
    resolves."""
    out = []
    floor, floor_by_round = aa_floor(r)
    plain = ("weft-http", "weft-http-again") if floor is not None else "weft-http"
    evaluation = r.get("route_eval") or {}
    for key, what, path, base in (
            ("route_added_p99_ms", "HTTP pair + 20 match rules and a 90/10 route at 1,000 rps: "
             "added p99 over the plain HTTP pair (weft-http" + (" and its A/A rerun, mean" if floor is not None else "")
             + "), paired by round", "weft-route", plain),
            ("route_retries_off_p99_ms", "the same with retries off (attempts 0) minus with Istio's "
             "default retries: p99, paired by round", "weft-route-noretry", "weft-route")):
        v, by_round = paired_p99(r, path, base)
        row = {"key": key, "what": what, "target": "≤ 0.05 ms", "measured": v,
               "by_round": by_round, "met": None if v is None else v <= 0.05}
        if floor is not None:
            row["aa_floor_ms"], row["aa_floor_by_round"] = floor, floor_by_round
        if v is not None:
            notes = []
            if floor is not None:
                notes.append(f"A/A floor {fmt(floor)} ms")
            if key == "route_added_p99_ms" and evaluation.get("p99_ns") is not None:
                notes.append(f"the table's evaluation {fmt(evaluation['p50_ns'], 0)} / "
                             f"{fmt(evaluation['p99_ns'], 0)} ns p50 / p99")
            if notes:
                row["shown"] = f"{fmt(v)} ms ({'; '.join(notes)})"
        out.append(row)
    return out


def gateway_targets(r):
    """Issue 20's ingress targets, each against the peers measured in the same run."""
    sc, gw = r["scenarios"], r.get("gateway") or {}
    out = []

    def compare(key, what, weft, peers, better, unit, digits):
        shown = [(n, v) for n, v in peers if v is not None]
        target = ("each peer's: " + ", ".join(f"{'≤' if better == 'low' else '≥'} {n} "
                                             f"{fmt(v, digits)}{unit}" for n, v in shown)
                  if shown else "each peer's (no peer measured)")
        met = None
        if weft is not None and shown:
            met = all((weft <= v) if better == "low" else (weft >= v) for _, v in shown)
        out.append({"key": key, "what": what, "target": target, "measured": weft, "met": met})

    for tls, front in (("", "HTTP/1.1 keep-alive"), ("-tls", "TLS termination")):
        def val(p, k):
            return (sc.get(f"gw-{p}{tls}") or {}).get(k)
        names = {"nginx": "nginx", "haproxy": "HAProxy"}
        key = "gw_tls" if tls else "gw"
        compare(f"{key}_p99_ms", f"ingress gateway, {front}, 1 KB at 1,000 rps: weft p99",
                val("weft", "p99_ms"), [(names[p], val(p, "p99_ms")) for p in ("nginx", "haproxy")],
                "low", " ms", 3)
        compare(f"{key}_max_rps", f"ingress gateway, {front}: weft max rps (same cores)",
                val("weft", "max_rps"), [(names[p], val(p, "max_rps")) for p in ("nginx", "haproxy")],
                "high", "/s", 0)
    rss = [v for s in ("gw-weft", "gw-weft-tls")
           for v in [(sc.get(s) or {}).get("rss_loaded_mb")] if v is not None]
    v = max(rss) if rss else None
    out.append({"key": "gw_rss_mb", "what": "ingress gateway: weft RSS at 1,000 rps (larger of the two fronts)",
                "target": "≤ 15 MB", "measured": v, "met": None if v is None else v <= 15})
    hs = ((gw.get("gw-weft-tls") or {}).get("handshakes") or {}).get("per_proxy_core")
    out.append({"key": "gw_handshakes_per_core", "what": "ingress gateway: weft new TLS handshakes per proxy core",
                "target": "≥ 1,000/s", "measured": hs, "met": None if hs is None else hs >= 1000})
    return out


def measured_values(r):
    weft = r["scenarios"].get("weft", {})
    procs_ = weft.get("proxies", {})
    ready = [p["ready_ms"] for p in procs_.values() if "ready_ms" in p]
    h1, h2 = r["scenarios"].get("weft-authz", {}), r["scenarios"].get("weft-h2", {})

    def vs_l4(e):
        if e.get("cpu_per_1000rps") is None or not weft.get("cpu_per_1000rps"):
            return None
        return round(e["cpu_per_1000rps"] / weft["cpu_per_1000rps"], 3)

    rss = [e["rss_loaded_mb"] for e in (h1, h2) if e.get("rss_loaded_mb") is not None]
    return {
        "authz_h1_beyond_null_p99_ms": h1.get("beyond_null_p99_ms"),
        "authz_h2_beyond_null_p99_ms": h2.get("beyond_null_p99_ms"),
        "authz_h1_cpu_vs_l4": vs_l4(h1),
        "authz_h2_cpu_vs_l4": vs_l4(h2),
        "authz_rss_mb": max(rss) if rss else None,
        "added_p99_ms": weft.get("added_p99_ms"),
        "cpu_per_1000rps": weft.get("cpu_per_1000rps"),
        "rss_idle_mb": weft.get("rss_idle_mb"),
        "rss_loaded_mb": weft.get("rss_loaded_mb"),
        "mtls_conns_per_proxy_core": (r.get("mtls_conns") or {}).get("per_proxy_core"),
        "webhook_reviews_per_s": (r.get("webhook") or {}).get("reviews_per_s"),
        "webhook_p99_ms": (r.get("webhook") or {}).get("p99_ms"),
        "csr_per_s": (r.get("csr") or {}).get("csr_per_s"),
        "authz_p50_ns": (r.get("authz") or {}).get("p50_ns"),
        "ready_ms": max(ready) if ready else None,
    }


def targets(r):
    values = measured_values(r)
    out = []
    for key, what, target, ok in TARGETS:
        v = values.get(key)
        out.append({"key": key, "what": what, "target": target, "measured": v,
                    "met": None if v is None else bool(ok(v))})
    peers_http_vs_l4(r, out)
    out.append(convergence_target(r.get("config_convergence")))
    out += gateway_targets(r)
    out += route_targets(r)
    out += issuer_targets(r)
    return out


def peers_http_vs_l4(r, out):
    """The floor beside issue 18's CPU ratios: what terminating HTTP costs the peers over their own
    L4 relay, same run, same shape (mutual-TLS pair, busier proxy): HAProxy in http mode ÷ HAProxy
    in tcp mode and nginx as an HTTP reverse proxy ÷ nginx's stream module for HTTP/1.1, HAProxy
    with HTTP/2 end to end ÷ HAProxy in tcp mode for h2. Shown beside weft's ratio, never folded
    into whether the target is met."""
    sc = r["scenarios"]

    def ratio(http, l4):
        a, b = (sc.get(http) or {}).get("cpu_per_1000rps"), (sc.get(l4) or {}).get("cpu_per_1000rps")
        return round(a / b, 3) if a and b else None

    rows = {"authz_h1_cpu_vs_l4": (("HAProxy http ÷ tcp", "haproxy_http_vs_tcp", "haproxy-http", "haproxy"),
                                   ("nginx http ÷ stream", "nginx_http_vs_stream", "nginx-http", "nginx")),
            "authz_h2_cpu_vs_l4": (("HAProxy h2 ÷ tcp", "haproxy_h2_vs_tcp", "haproxy-h2", "haproxy"),)}
    for t in out:
        peers = rows.get(t["key"])
        if not peers:
            continue
        floor = {key: ratio(http, l4) for _, key, http, l4 in peers}
        shown = ", ".join(f"{label} {floor[key]:.2f}×" for label, key, _, _ in peers if floor[key])
        if not shown:
            continue
        t["floor"] = floor
        if t["measured"] is not None:
            t["shown"] = f"{t['measured']:.2f}× (the peers' own, same run: {shown})"


def issuer_targets(r):
    """Issue 24's rows: CSR signing through each issuer (tests/issuer_bench.rs) and the added
    p99 of mesh traffic during rotation phase (b) (tests/rotation.rs). The issue's Performance
    section asks for the numbers and sets none, so they are reported, never met or missed."""
    target = "reported (issue 24 sets no number)"
    out = []
    iss = r.get("issuers") or {}
    for key, name in (("builtin", "the builtin CA"), ("vault", "Vault v1.21.0 (-dev, loopback)"),
                      ("cert_manager", "cert-manager v1.21.2 (CA issuer, a CertificateRequest each)")):
        e = iss.get(key)
        entry = {"key": f"issuer_{key}", "target": target, "measured": None, "met": None,
                 "what": f"CSR signing through {name}, {(e or {}).get('concurrency', 16)} in flight "
                         "(`pki::issue`, every check): per second, p50 / p99, failed"}
        if e:
            entry["measured"] = {k: e.get(k) for k in ("csr_per_s", "p50_ms", "p99_ms", "signed", "failed")}
            entry["shown"] = (f"{fmt(e.get('csr_per_s'), 0)}/s, p50 {fmt(e.get('p50_ms'))} / p99 "
                              f"{fmt(e.get('p99_ms'))} ms, {e.get('failed', 0)} failed of "
                              f"{e.get('signed', 0) + e.get('failed', 0):,}")
        out.append(entry)
    rot = r.get("rotation")
    entry = {"key": "rotation_added_p99_ms", "target": target, "measured": None, "met": None,
             "what": "root rotation: added p99 of mesh traffic (a new mTLS connection per request) "
                     "in phase (b) against steady state"}
    if rot:
        st, b = rot["steady"], rot["phase_b"]
        entry["measured"] = {"added_p99_ms": rot.get("added_p99_ms"), "steady_p99_ms": st.get("p99_ms"),
                             "phase_b_p99_ms": b.get("p99_ms"), "steady_requests": st.get("requests"),
                             "phase_b_requests": b.get("requests"),
                             "failed": st.get("failed", 0) + b.get("failed", 0)}
        entry["shown"] = (f"{rot['added_p99_ms']:+.3f} ms (p99 {fmt(st.get('p99_ms'))} ms steady, "
                          f"{fmt(b.get('p99_ms'))} ms in (b); {st.get('requests')} + "
                          f"{b.get('requests')} requests, "
                          f"{st.get('failed', 0) + b.get('failed', 0)} failed)")
    out.append(entry)
    return out


def convergence_target(c):
    """SPEC §14's two-part target: p99 over the streams the change concerns, and the operator's
    heap per connected proxy (the counting allocator's share; RSS covers both sides)."""
    entry = {"key": "config_convergence", "what": "config convergence, 1,000 proxies, one change",
             "target": "p99 ≤ 1 s, ≤ 100 KB operator memory per proxy", "measured": None,
             "met": None}
    if not c:
        entry["note"] = "control_plane.json has no convergence section"
        return entry
    p99, kb = c.get("p99_ms"), (c.get("memory") or {}).get("operator_heap_kb_per_proxy")
    entry["measured"] = {"p99_ms": p99, "operator_kb_per_proxy": kb,
                         "proxies": c.get("synced"), "concerned": c.get("concerned"),
                         "converged": c.get("converged")}
    if p99 is not None and kb is not None:
        # A stream that never converged is a miss, whatever the others' p99.
        entry["met"] = (c.get("converged") == c.get("concerned") and c.get("concerned", 0) > 0
                        and p99 <= 1000 and kb <= 100)
    return entry


def fmt(v, digits=3):
    if v is None:
        return "–"
    if isinstance(v, float) and abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}" if isinstance(v, float) else f"{v:,}"


def pair(proxies, key, digits):
    vals = [proxies[k][key] for k in sorted(proxies, key=lambda n: (not n.endswith("client"), n))]
    return " / ".join(fmt(v, digits) for v in vals)


def layout_words(load):
    c = load["cpus"]
    if load["layout"] == "pods":
        return (f"each side pinned as a pod with its sidecar: load generator and client proxy on "
                f"CPU {c['load']}, echo server and server proxy on CPU {c['echo']}")
    return (f"load generator and echo server on CPU {c['load']}, every proxy on CPU "
            f"{c['server_proxy']}")


def table(r):
    load = r["load"]
    lines = [
        f"Measured {r['date']} by `make bench` on the {r['machine']['cpus']}-core build machine "
        f"({r['machine']['cpu_model']}, Linux {r['machine']['kernel']}); load average "
        f"{r['machine'].get('loadavg_at_start') or '?'} at the start, "
        f"{r['machine']['loadavg_at_end']} at the end (other work on the machine shows here "
        f"and in the tails). fortio open loop, {load['qps']:,} rps, "
        f"{load['payload_bytes']} B bodies echoed, {load['connections']} keep-alive connections, "
        f"{load['duration']} per path after a warm-up, {load.get('rounds', 1)} rounds (every path "
        f"once per round); {layout_words(load)} (one worker per proxy), in network "
        "namespaces. Latency and CPU are medians over the rounds; added latency is the median "
        "over rounds of the path's percentile minus the direct path's in the same round. CPU and "
        "RSS are client proxy / server proxy; the HTTP/2 paths are compared with direct HTTP/2 and "
        "the h2c null floor. Results: `e2e/bench/results/latest.json`."
        + (" **The local cluster was running during this run: numbers are noisy.**"
           if r.get("local_cluster_running") else ""),
        "",
        "| path | p50 ms | p90 ms | p99 ms | added p50 / p90 / p99 ms | vCPU per 1,000 rps | RSS idle MB | RSS at 1,000 rps MB | max rps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in SCENARIOS:
        e = r["scenarios"].get(s)
        if e is None or s in GATEWAY:  # the ingress rows have their own table
            continue
        added = ("–" if e["added_p50_ms"] is None else
                 f"{e['added_p50_ms']:+.3f} / {e['added_p90_ms']:+.3f} / {e['added_p99_ms']:+.3f}")
        p = e.get("proxies")
        lines.append(
            f"| {LABELS[s]} | {fmt(e['p50_ms'])} | {fmt(e['p90_ms'])} | {fmt(e['p99_ms'])} | {added} | "
            f"{pair(p, 'cpu_per_1000rps', 3) if p else '–'} | {pair(p, 'rss_idle_mb', 1) if p else '–'} | "
            f"{pair(p, 'rss_loaded_mb', 1) if p else '–'} | {fmt(e['max_rps'], 0)} |")
    for s in r["skipped"]:
        lines.append(f"| {s.split(':', 1)[0]} | not run: {s.split(':', 1)[-1].strip()} ||||||||")
    floors = [(s, r["scenarios"][s]) for s in FLOORS
              if r["scenarios"].get(s, {}).get("added_p99_ms") is not None]
    if floors:
        beyond = "; ".join(
            f"{s} {e['beyond_null_p50_ms']:+.3f} / "
            f"{e['beyond_null_p90_ms']:+.3f} / {e['beyond_null_p99_ms']:+.3f}"
            for s, e in r["scenarios"].items()
            if e.get("beyond_null_p99_ms") is not None)
        shown = "; ".join(
            f"{LABELS[s].split('(')[1].rstrip(')')}: {e['added_p50_ms']:+.3f} / "
            f"{e['added_p90_ms']:+.3f} / {e['added_p99_ms']:+.3f} ms, "
            f"{pair(e['proxies'], 'cpu_per_1000rps', 3)} vCPU per 1,000 rps"
            for s, e in floors)
        lines += ["", f"The null relay pairs copy bytes and do nothing else (no TLS, no parsing, "
                      f"no capture): what two user-space hops cost on this machine. They add "
                      f"(p50 / p90 / p99) {shown}. Beyond the event-loop null pair, paired by "
                      f"round (p50 / p90 / p99 ms): {beyond}."]
    lines += gateway_table(r)
    lines += ["", "| target (SPEC §14; issue 18 for the HTTP + policies rows, issue 19 for the route rows, issue 20 for the ingress rows, issue 24 for the issuer and rotation rows) | measured | target | met |", "|---|---|---|---|"]
    units = {"added_p99_ms": " ms", "cpu_per_1000rps": " vCPU", "rss_idle_mb": " MB",
             "rss_loaded_mb": " MB", "mtls_conns_per_proxy_core": "/s",
             "webhook_reviews_per_s": "/s", "webhook_p99_ms": " ms", "csr_per_s": "/s",
             "ready_ms": " ms", "authz_p50_ns": " ns", "authz_h1_beyond_null_p99_ms": " ms",
             "authz_h2_beyond_null_p99_ms": " ms", "authz_h1_cpu_vs_l4": "×", "authz_h2_cpu_vs_l4": "×",
             "authz_rss_mb": " MB", "gw_p99_ms": " ms", "gw_tls_p99_ms": " ms", "gw_max_rps": "/s",
             "gw_tls_max_rps": "/s", "gw_rss_mb": " MB", "gw_handshakes_per_core": "/s",
             "route_added_p99_ms": " ms", "route_retries_off_p99_ms": " ms"}
    for t in r["targets"]:
        v = t["measured"]
        digits = {"ready_ms": 0, "rss_idle_mb": 1, "rss_loaded_mb": 1, "authz_rss_mb": 1,
                  "authz_h1_cpu_vs_l4": 2, "authz_h2_cpu_vs_l4": 2, "gw_rss_mb": 1, "gw_max_rps": 0,
                  "gw_tls_max_rps": 0, "gw_handshakes_per_core": 0}.get(t["key"], 3)
        if v is None:
            shown = "not measured yet"
        elif t.get("shown"):
            shown = t["shown"]
        elif t["key"] == "config_convergence":
            shown = (f"p99 {fmt(v['p99_ms'], 0)} ms, {fmt(v['operator_kb_per_proxy'], 1)} KB "
                     f"per proxy")
        else:
            shown = fmt(v, digits) + units.get(t["key"], "")
        met = "–" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['what']} | {shown} | {t['target']} | {met} |")
    pa = r.get("pod_admission")
    if pa:
        i, n = pa["injected"], pa["not_injected"]
        lines += ["", f"Pod creation through the API server ({i['count']} dry-run creations per "
                      f"namespace, alternating): enrolled p50 / p99 {fmt(i['p50_ms'])} / "
                      f"{fmt(i['p99_ms'])} ms, plain {fmt(n['p50_ms'])} / {fmt(n['p99_ms'])} ms; "
                      f"weft's injector adds {pa['added_p50_ms']:+.3f} ms at p50 and "
                      f"{pa['added_p99_ms']:+.3f} ms at p99 (the local cluster was up for this "
                      f"stage only)."]
    iss = r.get("issuers")
    if iss:
        def row(name, e):
            return (f"| {name} | {fmt(e.get('csr_per_s'), 0)}/s | {fmt(e.get('p50_ms'))} ms | "
                    f"{fmt(e.get('p99_ms'))} ms | {e.get('signed', 0):,} / {e.get('failed', 0)} |")
        c = (iss.get("cert_manager") or {}).get("concurrency", "?")
        lines += ["", f"CSR signing per issuer (issue 24; `pki::issue` with every check, {c} CSRs in "
                      f"flight, the local cluster up): Vault v1.21.0 `-dev` on loopback, cert-manager "
                      f"v1.21.2's own CA issuer and approver controllers (a CertificateRequest per CSR "
                      f"through the API server).", "",
                  "| issuer | CSRs | p50 | p99 | signed / failed |", "|---|---|---|---|---|"]
        for key, name in (("builtin", "builtin"), ("vault", "Vault"), ("cert_manager", "cert-manager")):
            if iss.get(key):
                lines.append(row(name, iss[key]))
    rot = r.get("rotation")
    if rot:
        st, b = rot["steady"], rot["phase_b"]
        lines += ["", f"Root rotation (issue 24; `weft ca rotate --renew-within {rot['renew_within_s']}s`, "
                      f"{rot['proxies']} meshed proxies on the local cluster, a new mTLS connection per "
                      f"request): p99 {fmt(b['p99_ms'])} ms during phase (b) ({b['requests']} requests "
                      f"in {b['seconds']} s, {b['failed']} failed) against {fmt(st['p99_ms'])} ms steady "
                      f"({st['requests']} in {st['seconds']} s, {st['failed']} failed): "
                      f"{rot['added_p99_ms']:+.1f} ms added at p99 (p50 {fmt(st['p50_ms'])} → "
                      f"{fmt(b['p50_ms'])} ms)."]
    mc = r.get("mtls_conns")
    if mc:
        lines += ["", f"New mTLS connections: {fmt(mc['per_s'], 0)}/s through the weft pair "
                      f"(busier proxy at {mc['busier_proxy_vcpu']} vCPU; direct TCP without "
                      f"keep-alive: {fmt(mc.get('direct_tcp_conns_per_s'), 0)}/s). Webhook: "
                      f"`webhook::review` on one core with a 5.6 KB pod CREATE review (no HTTP/TLS "
                      f"around it). CSR: `MeshCa::sign_workload_csr`, P-256, on one core."]
    sv = r.get("served")
    if sv:
        lines += ["", served_text(sv)]
    cc = r.get("config_convergence")
    if cc:
        mem, cpu = cc["memory"], cc.get("cpu_ms_during_change") or {}
        lines += ["", f"Config convergence: {cc['synced']:,} simulated proxies (mTLS, HTTP/2, one "
                      f"workload certificate each) on the real config routes, {cc['services']} "
                      f"Services with {cc['endpoints']:,} endpoints ({cc['snapshot_bytes'] / 1024:,.0f} KB "
                      f"snapshots); all synced in {fmt(cc['initial_sync_ms'], 0)} ms. One change "
                      f"(a new endpoint) concerns {cc['concerned']:,} proxies: {cc['converged']:,} "
                      f"got it, p50 / p99 / max {fmt(cc['p50_ms'], 0)} / {fmt(cc['p99_ms'], 0)} / "
                      f"{fmt(cc['max_ms'], 0)} ms from publication (MeshIndex build "
                      f"{fmt(cc['index_build_ms'], 1)} ms and the 100 ms debounce not included); "
                      f"the operator's thread used {fmt(cpu.get('operator'), 0)} ms of CPU for it, "
                      f"the simulated proxies' {fmt(cpu.get('proxies'), 0)} ms (serializing the "
                      f"1,000 snapshots once takes {fmt(cc.get('serialize_all_snapshots_ms'), 0)} ms). "
                      f"Operator heap {fmt(mem['operator_heap_kb_per_proxy'], 1)} KB per connected "
                      f"proxy ({fmt(mem['operator_heap_peak_kb_per_proxy_during_change'], 0)} KB at "
                      f"the peak of the change); process RSS {fmt(mem['rss_kb_per_proxy_both_sides'], 1)} "
                      f"KB per proxy, operator and simulated proxies together (one process, "
                      f"{cc['operator_threads']} operator thread, {cc['proxy_threads']} proxy "
                      f"thread, CPU {r.get('control_plane_cpus') or '?'})."]
    return "\n".join(lines)


def gateway_table(r):
    """Issue 20's ingress rows: weft-proxy gateway, nginx and HAProxy as ONE reverse proxy
    in front of the echo server, plain and TLS-terminating fronts."""
    sc, gw = r["scenarios"], r.get("gateway") or {}
    if not any(s in sc for s in GATEWAY):
        return []
    lines = ["", "Ingress gateway (issue 20): one reverse proxy in front of the echo server, "
                 "client → proxy on 198.18.250.2 → echo server on loopback, HTTP/1.1 keep-alive "
                 "on both sides, 1 KB bodies, no access log; weft is `weft-proxy gateway` from a "
                 "snapshot file (a listener per front, a virtual host for shop.bench.test routed to "
                 "a plaintext Service endpoint). TLS: TLS 1.3, a P-256 certificate, verified by the "
                 "client. Added latency is against the direct path (plaintext) in the same round. "
                 "Max rps: the load generator and echo server share the other core, so the rate "
                 "per vCPU the proxy used is shown too. Handshakes: full speed without keep-alive, "
                 "every request a new TLS connection (no resumption), ÷ the proxy's vCPU.", "",
             "| front | proxy | p50 ms | p99 ms | added p50 / p99 ms | vCPU per 1,000 rps | RSS idle / at 1,000 rps MB | max rps (proxy vCPU) | rps per proxy vCPU at max | new TLS handshakes/s (per proxy core) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in GATEWAY:
        e = sc.get(s)
        if e is None:
            continue
        g = gw.get(s) or {}
        hs = g.get("handshakes")
        added = ("–" if e.get("added_p50_ms") is None else
                 f"{e['added_p50_ms']:+.3f} / {e['added_p99_ms']:+.3f}")
        lines.append(
            f"| {'TLS' if s.endswith('-tls') else 'HTTP'} | {LABELS[s]} | {fmt(e['p50_ms'])} | "
            f"{fmt(e['p99_ms'])} | {added} | {fmt(e.get('cpu_per_1000rps'))} | "
            f"{fmt(e.get('rss_idle_mb'), 1)} / {fmt(e.get('rss_loaded_mb'), 1)} | "
            f"{fmt(e.get('max_rps'), 0)} ({fmt(g.get('vcpu_at_max_rps'), 2)}) | "
            f"{fmt(g.get('max_rps_per_proxy_vcpu'), 0)} | "
            + (f"{fmt(hs['per_s'], 0)} ({fmt(hs['per_proxy_core'], 0)})"
               + (f", {hs['errors']} errors" if hs.get("errors") else "") if hs else "–") + " |")
    return lines


def served_text(sv):
    """The served-endpoint figures (issue 21 item 12): real HTTPS through the operator's accept
    loop, one request at a time on one HTTP/2 connection."""
    def rate(e, key):
        return f"{fmt(e.get(key), 0)}/s (p99 {fmt(e.get('p99_ms'))} ms)" if e else "–"
    cached, uncached = sv.get("csr_cached") or {}, sv.get("csr_uncached") or {}
    wh, push, rr = sv.get("webhook") or {}, sv.get("config_pushes") or {}, sv.get("rapid_reset") or {}
    return (f"Served endpoints over real HTTPS (the operator's accept loop, mTLS on :15012, one "
            f"request at a time on one HTTP/2 connection, client and server sharing the core): "
            f"CSRs {rate(cached, 'csr_per_s')} with the TokenReview cached, "
            f"{rate(uncached, 'csr_per_s')} uncached (a stand-in reviewer answering at once: the "
            f"API server's round trip comes on top); AdmissionReviews {rate(wh, 'reviews_per_s')}; "
            f"config-stream pushes {rate(push, 'pushes_per_s')} to {push.get('streams', '?')} "
            f"streams over {push.get('changes', '?')} changes. An HTTP/2 rapid-reset burst "
            f"({rr.get('resets_per_burst', '?')} HEADERS+RST_STREAM on one connection) costs the "
            f"operator {fmt(rr.get('operator_cpu_ms_per_burst'))} ms of CPU, TLS handshake included; "
            f"{rr.get('ended_with_enhance_your_calm', '?')} of {rr.get('bursts', '?')} ended with "
            f"GOAWAY(ENHANCE_YOUR_CALM).")


def update_readme(path, text):
    with open(path) as f:
        readme = f.read()
    block = f"{START}\n{text}\n{END}"
    if START in readme and END in readme:
        readme = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, readme,
                        flags=re.S)
    else:
        readme = readme.rstrip("\n") + f"\n\n## Performance\n\n{block}\n"
    with open(path, "w") as f:
        f.write(readme)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--readme")
    a = ap.parse_args()
    r = build(a.raw)
    with open(a.out, "w") as f:
        json.dump(r, f, indent=2, ensure_ascii=False)
        f.write("\n")
    text = table(r)
    print(text)
    if a.readme:
        update_readme(a.readme, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
