#!/usr/bin/env bash
# No-op plan at the stat floor (issue 13), peers side by side on the same data:
# a farm of 1,000 plugins from `dir` sources (an executable and a README each)
# and 200 netboot images from `path` sources pinned by sha256 (a kernel and an
# initrd each), and the same farm at 10× the scale.
#   reconcile plan (no-op)                           wall and CPU (user + sys)
#   find -printf '%p %s %T@' over the managed trees  the stat-only lower bound
#   rsync -rcL --dry-run --delete                    the same job by content
# File sizes: tool 128 KiB, README 1 KiB, kernel 1 MiB, initrd 512 KiB — 0.4 GiB
# per copy at 1× (BENCH_FARM_SCALE multiplies them). The plan is measured in
# its steady state: after the apply, once what it installed is older than the
# stat index's settle time (2 s) and one plan has remembered it. Prints a
# Markdown table; raw hyperfine JSON lands in target/bench-data/farm-*/noop.json.
source "$(dirname "$0")/common.sh"
bench_setup
RUNS=${RUNS:-15}
SCALES=${SCALES:-1 10}

generate() {
    local scale=$1 D=$DATA/farm-$1x
    rm -rf "$D" && mkdir -p "$D/src" "$D/boot"
    python3 - "$D" "$((1000 * scale))" "$((200 * scale))" "${BENCH_FARM_SCALE:-1}" <<'PY'
import hashlib, os, sys
d, plugins, images, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
kib = lambda n: os.urandom(int(n * k * 1024))
out = ["version = 1"]
for i in range(plugins):
    src = f"{d}/src/p{i:05}"
    os.makedirs(src)
    with open(f"{src}/tool", "wb") as f:
        f.write(b"#!/bin/sh\necho %d\nexit 0\n" % i + kib(128))
    os.chmod(f"{src}/tool", 0o755)
    with open(f"{src}/README.md", "wb") as f:
        f.write(b"plugin %d\n" % i + kib(1).hex().encode()[:1024])
    out.append(f'[plugin.p{i:05}]\nversion = "1.0.0"\nbin = "tool"\nsource = {{ dir = "src/p{i:05}" }}')
for i in range(images):
    lines = [f'[image.i{i:05}]', 'root = "tftp"', 'arch = "amd64"', f'release = "r{i:05}"', 'purpose = "install"']
    for name, size in (("linux", 1024), ("initrd.gz", 512)):
        data = kib(size)
        path = f"{d}/boot/{name}-{i:05}"
        with open(path, "wb") as f:
            f.write(data)
        lines.append(f'files."{name}" = {{ path = "boot/{name}-{i:05}", sha256 = "{hashlib.sha256(data).hexdigest()}" }}')
    out.append("\n".join(lines))
with open(f"{d}/farm.toml", "w") as f:
    f.write("\n".join(out) + "\n")
PY
    "$RECONCILE" -q apply -f "$D/farm.toml" >/dev/null
    sleep 3
    "$RECONCILE" -q plan -f "$D/farm.toml" >/dev/null # exit 0: in sync, and remembered
    # rsync compares desired copies with the installed trees, reached through one root of links
    mkdir -p "$D/desired" "$D/installed"
    cp -a "$D/plugins" "$D/tftp" "$D/desired/"
    ln -s "$D/plugins" "$D/installed/plugins"
    ln -s "$D/tftp" "$D/installed/tftp"
}

cpu() { python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['results'][int(sys.argv[2])]; print(r['user']+r['system'])" "$1" "$2"; }

echo "| farm | reconcile plan (no-op) | find -printf (stat floor) | vs find | rsync -rc --dry-run | vs rsync |"
echo "|---|---|---|---|---|---|"
for scale in $SCALES; do
    D=$DATA/farm-${scale}x
    generate "$scale"
    files=$(find "$D/plugins" "$D/tftp" -type f | wc -l)
    hyperfine -N --warmup 3 --runs "$RUNS" --export-json "$D/noop.json" \
        -n "reconcile plan (no-op)" "$RECONCILE -q plan -f $D/farm.toml" \
        -n "find -printf size+mtime" "find $D/plugins $D/tftp -printf '%p %s %T@\n'" \
        -n "rsync -rc --dry-run" "rsync -rcL --dry-run --delete $D/desired/ $D/installed/" >/dev/null
    J=$D/noop.json
    plan=$(mean "$J" 0) find=$(mean "$J" 1) rsync=$(mean "$J" 2)
    cplan=$(cpu "$J" 0) cfind=$(cpu "$J" 1)
    echo "| ${scale}× ($((1200 * scale)) resources, $files files) | $(ms "$plan") ms, CPU $(ms "$cplan") ms | $(ms "$find") ms, CPU $(ms "$cfind") ms | $(ratio "$plan" "$find")× wall, $(ratio "$cplan" "$cfind")× CPU | $(ms "$rsync") ms | $(ratio "$rsync" "$plan")× faster |"
done
