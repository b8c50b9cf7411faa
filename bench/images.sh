#!/usr/bin/env bash
# Netboot images benchmark (issue 3), peers side by side on the same data in one run:
#   1. no-op `reconcile plan` over 200 published images (2,000 files, ~2 GiB)
#      vs `find` over the same tree (stat-only lower bound)
#      vs MAAS's way: Python `filecmp.cmpfiles(shallow=False)` of each image against its source
#      vs `rsync -rc --dry-run` of the tree against its desired copy
#   2. publishing one 200 MiB image (4 × 50 MiB) vs `cp` + `sha256sum` of the files.
source "$(dirname "$0")/common.sh"
bench_setup
D=$DATA/images
rm -rf "$D" && mkdir -p "$D/src"

# 200 images of 10 files: sizes 256 KiB … 1.75 MiB (about 1 MiB each on average)
{
    echo "version = 1"
    for i in $(seq -w 1 200); do
        mkdir -p "$D/src/r$i"
        printf '[image.i%s]\nroot = "tftp"\narch = "amd64"\nrelease = "r%s"\npurpose = "install"\n' "$i" "$i"
        for f in $(seq 0 9); do
            head -c $(( (f % 7 + 1) * 262144 )) /dev/urandom > "$D/src/r$i/f$f"
            printf 'files.f%s = { path = "src/r%s/f%s", sha256 = "%s" }\n' "$f" "$i" "$f" "$(sha256sum "$D/src/r$i/f$f" | cut -d' ' -f1)"
        done
    done
} > "$D/farm.toml"
"$RECONCILE" -q apply -f "$D/farm.toml" >/dev/null
sleep 3 # past the stat index's settle time: measure the steady state
"$RECONCILE" -q plan -f "$D/farm.toml" >/dev/null   # exit 0: in sync, and remembered
FILES=$(find "$D/tftp" -type f ! -name '.reconcile-receipt.json' | wc -l)
MB=$(du -sm "$D/tftp" | cut -f1)

# the desired tree for rsync (hard links: no extra disk, both sides still hashed)
rm -rf "$D/desired" && mkdir -p "$D/desired/amd64/generic"
for i in $(seq -w 1 200); do
    mkdir -p "$D/desired/amd64/generic/r$i/install"
    cp -al "$D/src/r$i/." "$D/desired/amd64/generic/r$i/install/"
    cp "$D/tftp/amd64/generic/r$i/install/.reconcile-receipt.json" "$D/desired/amd64/generic/r$i/install/"
done
cat > "$D/maas_compare.py" <<'PY'
# MAAS install_pxe_image's check: compare each installed image with its download, byte by byte.
import filecmp, os, sys
root = sys.argv[1]
changed = 0
for rel in sorted(os.listdir(f"{root}/src")):
    src, dest = f"{root}/src/{rel}", f"{root}/tftp/amd64/generic/{rel}/install"
    names = sorted(os.listdir(src))
    match, mismatch, errors = filecmp.cmpfiles(src, dest, names, shallow=False)
    changed += bool(mismatch or errors)
sys.exit(1 if changed else 0)
PY
python3 "$D/maas_compare.py" "$D"

hyperfine -N --warmup 1 --runs 5 --export-json "$D/noop.json" \
    -n "reconcile plan (no-op)" "$RECONCILE -q plan -f $D/farm.toml" \
    -n "find -printf size+mtime" "find $D/tftp -printf '%p %s %T@\n'" \
    -n "MAAS filecmp.cmpfiles(shallow=False)" "python3 $D/maas_compare.py $D" \
    -n "rsync -rc --dry-run" "rsync -rc --dry-run --delete $D/desired/ $D/tftp/" >/dev/null
PLAN=$(mean "$D/noop.json" 0); FIND=$(mean "$D/noop.json" 1); MAAS=$(mean "$D/noop.json" 2); RSYNC=$(mean "$D/noop.json" 3)

# one 200 MiB image: 4 files of 50 MiB
B=$D/big && rm -rf "$B" && mkdir -p "$B/src"
for f in 0 1 2 3; do head -c 52428800 /dev/urandom > "$B/src/f$f"; done
{
    printf 'version = 1\n[image.big]\nroot = "tftp"\narch = "amd64"\nrelease = "big"\npurpose = "install"\n'
    for f in 0 1 2 3; do printf 'files.f%s = { path = "src/f%s" }\n' "$f" "$f"; done
} > "$B/farm.toml"
sync
hyperfine -N --warmup 1 --runs 8 --export-json "$B/install.json" \
    --prepare "rm -rf $B/tftp $B/.reconcile $B/out" \
    -n "reconcile apply (200 MiB image)" "$RECONCILE -q apply -f $B/farm.toml" \
    -n "cp + sha256sum" "sh -c 'mkdir -p $B/out && cp $B/src/f0 $B/src/f1 $B/src/f2 $B/src/f3 $B/out/ && sha256sum $B/src/f0 $B/src/f1 $B/src/f2 $B/src/f3 >/dev/null'" >/dev/null
INST=$(mean "$B/install.json" 0); CP=$(mean "$B/install.json" 1)
rm -rf "$D/desired"

cat <<MD
| measurement | reconcile | peer | ratio | target |
|---|---|---|---|---|
| no-op plan, 200 images ($FILES files, $MB MiB) vs \`find\` | $(ms "$PLAN") ms | $(ms "$FIND") ms | $(ratio "$PLAN" "$FIND")× | ≤ 1.5× |
| same no-op plan vs MAAS \`filecmp.cmpfiles(shallow=False)\` | $(ms "$PLAN") ms | $(ms "$MAAS") ms | $(ratio "$MAAS" "$PLAN")× faster | ≥ 20× faster |
| same no-op plan vs \`rsync -rc --dry-run\` | $(ms "$PLAN") ms | $(ms "$RSYNC") ms | $(ratio "$RSYNC" "$PLAN")× faster | ≥ 10× faster |
| publish a 200 MiB image vs \`cp\` + \`sha256sum\` | $(ms "$INST") ms | $(ms "$CP") ms | $(ratio "$INST" "$CP")× | ≤ 1.2× |
MD
