#!/usr/bin/env bash
# watch --listen (issue 22), one run:
#   1. /metrics scrape latency, p50/p99 over 2000 requests on one keep-alive
#      connection and 500 with a new connection each, text and OpenMetrics;
#      beside it, the same against Prometheus' own /metrics (Go's
#      client_golang, the reference exposition), on the same machine;
#   2. watch's CPU over IDLE_SECONDS (60) idle: without --listen, with
#      --listen and nobody asking, and with --listen scraped every second by
#      a real Prometheus.
source "$(dirname "$0")/common.sh"
bench_setup
command -v prometheus >/dev/null || { echo "bench: needs prometheus (apt-get install prometheus)" >&2; exit 1; }
D=$DATA/listen
rm -rf "$D" && mkdir -p "$D/src/1"
printf '#!/bin/sh\necho 1\n' > "$D/src/1/tool"
{
    printf 'version = 1\n'
    for i in $(seq 1 20); do
        printf '[plugin.tool%s]\nversion = "1"\nsource = { dir = "src/1" }\nbin = "tool"\n' "$i"
    done
} > "$D/reconcile.toml"
IDLE=${IDLE_SECONDS:-60}
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT

start_watch() { # name, extra args…
    local log=$D/$1.log; shift
    "$RECONCILE" watch -f "$D/reconcile.toml" --json --interval 1h "$@" > "$log" 2>&1 &
    PIDS+=($!)
    until grep -q '"started"' "$log"; do sleep 0.05; done
    echo $!
}
ticks() { python3 -c "import sys; f=open(f'/proc/{sys.argv[1]}/stat').read().rsplit(')',1)[1].split(); print(int(f[11])+int(f[12]))" "$1"; }
cpu_over() { # pid → CPU seconds over IDLE seconds
    local t; t=$(ticks "$1"); sleep "$IDLE"
    python3 -c "import os,sys; print(f'{(int(sys.argv[2])-int(sys.argv[1]))/os.sysconf(\"SC_CLK_TCK\"):.2f}')" "$t" "$(ticks "$1")"
}

# idle without --listen
W0=$(start_watch plain)
sleep 1; CPU_PLAIN=$(cpu_over "$W0"); kill "$W0"

# with --listen: nobody asks
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
W1=$(start_watch listen --listen "127.0.0.1:$PORT")
sleep 1; CPU_LISTEN=$(cpu_over "$W1")

# Prometheus scraping it every second
PPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: reconcile\n    static_configs:\n      - targets: ["127.0.0.1:%s"]\n' "$PORT" > "$D/prometheus.yml"
prometheus --config.file="$D/prometheus.yml" --storage.tsdb.path="$D/tsdb" \
    --web.listen-address="127.0.0.1:$PPORT" --log.level=warn > "$D/prometheus.log" 2>&1 &
PIDS+=($!)
until curl -sf "http://127.0.0.1:$PPORT/-/ready" >/dev/null; do sleep 0.2; done
sleep 3; CPU_SCRAPED=$(cpu_over "$W1")

python3 - "$PORT" "$PPORT" "$CPU_PLAIN" "$CPU_LISTEN" "$CPU_SCRAPED" "$IDLE" <<'PY'
import http.client, sys, time
port, pport = int(sys.argv[1]), int(sys.argv[2])
cpu_plain, cpu_listen, cpu_scraped, idle = sys.argv[3:7]
OM = "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"

def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]

def keepalive(p, accept, n=2000):
    c = http.client.HTTPConnection("127.0.0.1", p)
    out, size = [], 0
    for _ in range(n):
        t = time.perf_counter()
        c.request("GET", "/metrics", headers={"Accept": accept} if accept else {})
        body = c.getresponse().read()
        out.append((time.perf_counter() - t) * 1e6)
        size = len(body)
    return out, size

def fresh(p, accept, n=500):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        c = http.client.HTTPConnection("127.0.0.1", p)
        c.request("GET", "/metrics", headers={"Accept": accept} if accept else {})
        c.getresponse().read()
        c.close()
        out.append((time.perf_counter() - t) * 1e6)
    return out

print("| /metrics | bytes | keep-alive p50 | keep-alive p99 | new connection p50 | new connection p99 |")
print("|---|---|---|---|---|---|")
for name, p, accept in [
    ("reconcile watch, text 0.0.4", port, None),
    ("reconcile watch, OpenMetrics", port, OM),
    ("Prometheus 2.42's own (client_golang), text", pport, None),
]:
    ka, size = keepalive(p, accept)
    fr = fresh(p, accept)
    print(f"| {name} | {size:,} | {pct(ka,50):.0f} µs | {pct(ka,99):.0f} µs | {pct(fr,50):.0f} µs | {pct(fr,99):.0f} µs |")
print()
print(f"| watch, {idle} idle seconds | CPU |")
print("|---|---|")
print(f"| without --listen | {cpu_plain} s |")
print(f"| --listen, nobody asking | {cpu_listen} s |")
print(f"| --listen, scraped every second by Prometheus | {cpu_scraped} s |")
PY
