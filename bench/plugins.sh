#!/usr/bin/env bash
# Plugins benchmark (issue 2), peers side by side on the same data in one run:
#   1. no-op `reconcile plan` over 1,000 installed plugins (~20,000 files)
#      vs `find` listing the same files with size and mtime (stat-only lower bound)
#      vs `rsync -rc --dry-run` comparing the tree with its desired copy
#   2. installing a 100 MiB plugin archive vs `tar -xzf` + `sha256sum` of it,
#      and reconcile's peak RSS while doing it.
# Prints a Markdown table; raw hyperfine JSON lands in target/bench-data/.
source "$(dirname "$0")/common.sh"
bench_setup
# no-op plan over 1,000 installed plugins of 20 files each; $1 = size of each plugin's executable
noop() {
    local exe_kib=$1 D=$DATA/plugins-$1k
    rm -rf "$D" && mkdir -p "$D/src/tool"
    head -c $((exe_kib * 1024)) /dev/urandom > "$D/src/tool/tool" && chmod +x "$D/src/tool/tool"
    for i in $(seq 1 19); do head -c $(( (i % 8 + 1) * 1024 )) /dev/urandom > "$D/src/tool/data$i.bin"; done
    {
        echo "version = 1"
        for i in $(seq -w 1 1000); do
            printf '[plugin.p%s]\nversion = "1.0.0"\nbin = "tool"\nsource = { dir = "src/tool" }\n' "$i"
        done
    } > "$D/farm.toml"
    "$RECONCILE" -q apply -f "$D/farm.toml" >/dev/null
    sleep 3 # past the stat index's settle time: measure the steady state
    "$RECONCILE" -q plan -f "$D/farm.toml" >/dev/null   # exit 0: in sync, and remembered
    FILES=$(find "$D/plugins" -type f | wc -l)
    BYTES=$(du -sm "$D/plugins" | cut -f1)
    # rsync's job: compare the installed tree with a copy of what it should be, by content
    rm -rf "$D/desired" && cp -a "$D/plugins" "$D/desired"
    hyperfine -N --warmup 3 --runs 15 --export-json "$D/noop.json" \
        -n "reconcile plan (no-op)" "$RECONCILE -q plan -f $D/farm.toml" \
        -n "find -printf size+mtime" "find $D/plugins -printf '%p %s %T@\n'" \
        -n "rsync -rc --dry-run" "rsync -rc --dry-run --delete $D/desired/ $D/plugins/" >/dev/null
    PLAN=$(mean "$D/noop.json" 0); FIND=$(mean "$D/noop.json" 1); RSYNC=$(mean "$D/noop.json" 2)
    rm -rf "$D/desired"
}

noop 1024
PLAN_A=$PLAN FIND_A=$FIND RSYNC_A=$RSYNC FILES_A=$FILES MB_A=$BYTES
noop 4
PLAN_B=$PLAN FIND_B=$FIND RSYNC_B=$RSYNC FILES_B=$FILES MB_B=$BYTES
D=$DATA/plugins-big

# 100 MiB plugin archive (base64 of random bytes: compresses like a typical binary)
B=$D && rm -rf "$B" && mkdir -p "$B/src/big_1.0.0_linux_amd64"
head -c 78643200 /dev/urandom | base64 -w0 | head -c 104857600 > "$B/src/big_1.0.0_linux_amd64/big"
chmod +x "$B/src/big_1.0.0_linux_amd64/big"
tar -czf "$B/big.tar.gz" -C "$B/src" big_1.0.0_linux_amd64
printf 'version = 1\n[plugin.big]\nversion = "1.0.0"\nsource = { path = "big.tar.gz" }\n' > "$B/farm.toml"
sync

hyperfine -N --warmup 1 --runs 8 --export-json "$B/install.json" \
    --prepare "rm -rf $B/plugins $B/.reconcile $B/out" \
    -n "reconcile apply (install 100 MiB)" "$RECONCILE -q apply -f $B/farm.toml" \
    -n "tar -xzf + sha256sum" "sh -c 'mkdir -p $B/out && tar -xzf $B/big.tar.gz -C $B/out && sha256sum $B/big.tar.gz >/dev/null'" >/dev/null
inst=$(mean "$B/install.json" 0); tarsha=$(mean "$B/install.json" 1)
rm -rf "$B/plugins" "$B/.reconcile"
rss_kb=$(/usr/bin/time -f %M "$RECONCILE" -q apply -f "$B/farm.toml" 2>&1 >/dev/null | tail -1)

cat <<MD
| measurement | reconcile | peer | ratio | target |
|---|---|---|---|---|
| no-op plan, 1,000 plugins with a 1 MiB executable ($FILES_A files, $MB_A MiB) vs \`find\` | $(ms "$PLAN_A") ms | $(ms "$FIND_A") ms | $(ratio "$PLAN_A" "$FIND_A")× | ≤ 1.5× |
| same no-op plan vs \`rsync -rc --dry-run\` | $(ms "$PLAN_A") ms | $(ms "$RSYNC_A") ms | $(ratio "$RSYNC_A" "$PLAN_A")× faster | ≥ 10× faster |
| no-op plan, 1,000 plugins of small files only ($FILES_B files, $MB_B MiB) vs \`find\` | $(ms "$PLAN_B") ms | $(ms "$FIND_B") ms | $(ratio "$PLAN_B" "$FIND_B")× | ≤ 1.5× |
| same small-file plan vs \`rsync -rc --dry-run\` | $(ms "$PLAN_B") ms | $(ms "$RSYNC_B") ms | $(ratio "$RSYNC_B" "$PLAN_B")× faster | ≥ 10× faster |
| install 100 MiB plugin archive vs \`tar -xzf\` + \`sha256sum\` | $(ms "$inst") ms | $(ms "$tarsha") ms | $(ratio "$inst" "$tarsha")× | ≤ 1.2× |
| peak RSS during that install | $((rss_kb / 1024)) MiB | — | — | < 64 MiB |
MD
