#!/usr/bin/env bash
# What Markdown costs a plan (issue 12): `reconcile plan` on a 1,200-resource
# farm where every resource has a change (1,000 plugins from `dir` sources,
# 200 netboot images from `path` sources, nothing applied yet), as text and
# as `--format markdown`, in one hyperfine run on the same data. The
# difference of the two is the rendering. Prints a Markdown table; raw
# hyperfine JSON in target/bench-data/markdown/plan.json.
source "$(dirname "$0")/common.sh"
bench_setup
RUNS=${RUNS:-30}
D=$DATA/markdown
rm -rf "$D" && mkdir -p "$D"
python3 - "$D" <<'PY'
import os, sys
d = sys.argv[1]
out = ["version = 1"]
for i in range(1000):
    src = f"{d}/src/p{i:05}"
    os.makedirs(src)
    with open(f"{src}/tool", "w") as f:
        f.write(f"#!/bin/sh\necho {i}\n")
    os.chmod(f"{src}/tool", 0o755)
    out.append(f'[plugin.p{i:05}]\nversion = "1.0.0"\nbin = "tool"\nsource = {{ dir = "src/p{i:05}" }}')
os.makedirs(f"{d}/boot")
for i in range(200):
    for name in ("linux", "initrd.gz"):
        with open(f"{d}/boot/{name}-{i:05}", "wb") as f:
            f.write(os.urandom(4096))
    out.append("\n".join([f'[image.i{i:05}]', 'root = "tftp"', 'arch = "amd64"', f'release = "r{i:05}"', 'purpose = "install"',
        f'files.linux = {{ path = "boot/linux-{i:05}" }}', f'files."initrd.gz" = {{ path = "boot/initrd.gz-{i:05}" }}']))
with open(f"{d}/farm.toml", "w") as f:
    f.write("\n".join(out) + "\n")
PY
"$RECONCILE" -q plan -f "$D/farm.toml" >/dev/null || [ $? -eq 2 ]
sleep 3
hyperfine -N -i --warmup 3 --runs "$RUNS" --export-json "$D/plan.json" \
    -n "plan (text)" "$RECONCILE -q plan -f $D/farm.toml" \
    -n "plan --format markdown" "$RECONCILE -q plan --format markdown -f $D/farm.toml" >/dev/null
text=$(mean "$D/plan.json" 0) md=$(mean "$D/plan.json" 1)
tmed=$(median "$D/plan.json" 0) mmed=$(median "$D/plan.json" 1)
chars=$("$RECONCILE" -q plan --format markdown -f "$D/farm.toml" | wc -c || true)
echo "| 1,200 resources, 1,200 changes | text | markdown | markdown adds | target |"
echo "|---|---|---|---|---|"
echo "| mean | $(ms "$text") ms | $(ms "$md") ms | $(python3 -c "print(f'{($md-$text)*1000:+.1f}')") ms | < 5 ms |"
echo "| median | $(ms "$tmed") ms | $(ms "$mmed") ms | $(python3 -c "print(f'{($mmed-$tmed)*1000:+.1f}')") ms | < 5 ms |"
echo
echo "Markdown document: $chars bytes (cut to the 65,536-character comment limit)."
