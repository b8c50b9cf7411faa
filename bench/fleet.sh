#!/usr/bin/env bash
# Pull-based GitOps (issue 14): (1) time from `git commit` in the farm's
# repository to the host converged on it, with `watch --git` polling every
# INTERVAL (1 s here; 1 min is the packaged default), over ROUNDS commits each
# adding a plugin; (2) the idle cost of the poll loop: CPU (user + sys,
# children included) of `reconcile watch --git` on an unchanged repository
# for IDLE seconds, against a shell loop doing only `git fetch` at the same
# interval — the least any poller must do — extrapolated to an hour at the
# 1 min default.
source "$(dirname "$0")/common.sh"
bench_setup
ROUNDS=${ROUNDS:-10}
IDLE=${IDLE:-60}
D=$DATA/fleet
rm -rf "$D" && mkdir -p "$D/origin" "$D/host"
git -C "$D/origin" init -q -b main
commit() { # $1: plugins to declare
    local toml="version = 1"
    for p in $(seq 1 "$1"); do
        printf '#!/bin/sh\necho %s\n' "$p" >"$D/origin/p$p"
        toml+=$'\n'"[plugin.p$p]"$'\n'"version = \"1\""$'\n'"dir = \"$D/host/plugins\""$'\n'"source = { path = \"p$p\" }"
    done
    printf '%s\n' "$toml" >"$D/origin/farm.toml"
    git -C "$D/origin" add -A
    git -C "$D/origin" -c user.email=b@b -c user.name=b commit -qm "$1 plugins"
}
commit 1
GIT=(--git "file://$D/origin" --path farm.toml --checkout "$D/host/checkout")

# (1) push → converged
"$RECONCILE" watch "${GIT[@]}" --interval 1s --json >"$D/watch.log" 2>&1 &
W=$!
trap 'kill $W 2>/dev/null' EXIT
until [ -x "$D/host/plugins/p1/p1" ]; do sleep 0.05; done
lat=()
for i in $(seq 2 $((ROUNDS + 1))); do
    commit "$i"
    t0=$(date +%s.%N)
    until [ -x "$D/host/plugins/p$i/p$i" ]; do sleep 0.01; done
    t1=$(date +%s.%N)
    lat+=("$(python3 -c "print($t1 - $t0)")")
done
kill -INT $W; wait $W 2>/dev/null || true
stats=$(python3 -c "import statistics,sys; v=sorted(map(float,sys.argv[1:])); print(f'{statistics.median(v)*1000:.0f} ms median, {v[-1]*1000:.0f} ms max, {min(v)*1000:.0f} ms min')" "${lat[@]}")

# (2) idle: nothing new to fetch
cpu_of() { /usr/bin/time -f "%U %S" -o "$D/time" "$@" >/dev/null 2>&1 || true; tail -1 "$D/time" | awk '{print $1 + $2}'; }
rec=$(cpu_of timeout -s INT "$IDLE" "$RECONCILE" watch "${GIT[@]}" --interval 1s --json)
peer_repo="$D/host/peer"
git clone -q "file://$D/origin" "$peer_repo"
peer=$(cpu_of timeout -s INT "$IDLE" bash -c "while sleep 1; do git -C $peer_repo fetch -q origin main; done")
per_hour() { python3 -c "import sys; print(f'{float(sys.argv[1]) / $IDLE * 60:.2f} s')" "$1"; } # 1 s interval → 1 min default: ÷60 fetches, ×60 min

echo "| measurement | reconcile watch --git | peer |"
echo "|---|---|---|"
echo "| commit → converged, interval 1 s, $ROUNDS commits | $stats | — |"
echo "| idle CPU over ${IDLE} s at a 1 s interval (fetch + resync each time) | $rec s | \`git fetch\` loop: $peer s |"
echo "| idle CPU per hour at the 1 min default (extrapolated) | $(per_hour "$rec") | $(per_hour "$peer") |"
