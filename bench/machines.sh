#!/usr/bin/env bash
# Machines benchmark (issue 4), as root:
#   1. switch and rollback on btrfs: a 64 MiB machine vs a 4 GiB machine (medians; should be flat)
#   2. creating a revision with the dir backend vs a plain copy of the same tree,
#      without reflink (ext4) and with reflink (XFS loop image, reflink=1)
#   3. creating + deleting a working snapshot on btrfs (median; target < 20 ms)
source "$(dirname "$0")/common.sh"
[ "$(id -u)" = 0 ] || { echo "bench/machines.sh: needs root (loop mounts, btrfs ioctls)" >&2; exit 1; }
bench_setup
(cd "$ROOT" && cargo build --release --quiet --example snapshot-bench)
for p in btrfs-progs xfsprogs busybox-static; do dpkg -s "$p" >/dev/null 2>&1 || apt-get install -y -qq "$p" >/dev/null; done
D=$DATA/machines
cleanup() { umount "$D/btrfs" 2>/dev/null || true; umount "$D/xfs" 2>/dev/null || true; }
trap cleanup EXIT
cleanup; rm -rf "$D"; mkdir -p "$D/btrfs" "$D/xfs"

# --- btrfs: 64 MiB and 4 GiB machines, two revisions each (reflinked from one source tree)
truncate -s 12G "$D/btrfs.img" && mkfs.btrfs -q -f "$D/btrfs.img" >/dev/null && mount -o loop "$D/btrfs.img" "$D/btrfs"
B=$D/btrfs
for m in small big; do
    "$ROOT/tests/fixtures/make-rootfs.sh" "$B/src-$m" "$m" >/dev/null
done
head -c 64M /dev/urandom > "$B/src-small/var/data"
head -c 4G /dev/zero > "$B/src-big/var/data"
sync
farm() {  # farm NAME REVISION
    printf 'version = 1\n[settings]\nstate_dir = "state-%s"\n[volume.default]\npath = "machines"\nbackend = "btrfs"\n[machine.%s]\nrevision = %s\nsource = { dir = "src-%s" }\nkeep = 2\n[machine.%s.toolchain.tc]\nbootstrap = ["/bin/true"]\n' "$1" "$1" "$2" "$1" "$1" > "$B/$1-$2.toml"
}
for m in small big; do
    farm $m 1; farm $m 2
    "$RECONCILE" -q apply -f "$B/$m-1.toml" >/dev/null
    "$RECONCILE" -q apply -f "$B/$m-2.toml" >/dev/null
done
# each measured run switches 1 → 2 (the link, and the toolchain snapshot rebuilt on the new revision);
# --prepare rolls back 2 → 1 the same way
hyperfine -N --warmup 2 --runs 15 --export-json "$D/switch.json" \
    --prepare "$RECONCILE -q apply -f $B/small-1.toml" -n "switch, 64 MiB machine" "$RECONCILE -q apply -f $B/small-2.toml" \
    --prepare "$RECONCILE -q apply -f $B/big-1.toml" -n "switch, 4 GiB machine" "$RECONCILE -q apply -f $B/big-2.toml" >/dev/null
SMALL=$(median "$D/switch.json" 0); BIG=$(median "$D/switch.json" 1)

read -r SNAP50 SNAP95 SNAPMAX < <("$ROOT/target/release/examples/snapshot-bench" "$B/big-2.toml" big 200)
hyperfine -N --warmup 3 --runs 30 --export-json "$D/exec.json" \
    -n "reconcile exec big -- /bin/true" "$RECONCILE exec -f $B/big-2.toml big -t tc -- /bin/true" >/dev/null
EXEC=$(median "$D/exec.json" 0)

# --- dir backend: a 300 MiB tree of 3,000 files, on ext4 (no reflink) and XFS (reflink)
truncate -s 3G "$D/xfs.img" && mkfs.xfs -q -f -m reflink=1 "$D/xfs.img" && mount -o loop "$D/xfs.img" "$D/xfs"
rev_bench() {  # rev_bench DIR LABEL
    local W=$1
    rm -rf "$W/src" && mkdir -p "$W/src"
    for i in $(seq 1 30); do mkdir -p "$W/src/d$i"; for j in $(seq 1 100); do head -c 102400 /dev/urandom > "$W/src/d$i/f$j"; done; done
    printf 'version = 1\n[volume.default]\npath = "machines"\nbackend = "dir"\n[machine.m]\nrevision = 1\nsource = { dir = "src" }\n' > "$W/farm.toml"
    sync
    hyperfine -N --warmup 1 --runs 8 --export-json "$W/rev.json" \
        --prepare "rm -rf $W/machines $W/.reconcile $W/copy" -n "reconcile: new revision (dir backend)" "$RECONCILE -q apply -f $W/farm.toml" \
        --prepare "rm -rf $W/machines $W/.reconcile $W/copy" -n "cp -a --reflink=never" "cp -a --reflink=never $W/src $W/copy" \
        --prepare "rm -rf $W/machines $W/.reconcile $W/copy" -n "cp -a --reflink=auto" "cp -a --reflink=auto $W/src $W/copy" \
        --prepare "rm -rf $W/machines $W/.reconcile $W/copy" -n "cp -a --reflink=never + sync" "sh -c 'cp -a --reflink=never $W/src $W/copy && sync -f $W/copy'" >/dev/null
    echo "$(median "$W/rev.json" 0) $(median "$W/rev.json" 1) $(median "$W/rev.json" 2) $(median "$W/rev.json" 3)"
}
mkdir -p "$D/ext4"
read -r R_EXT4 CP_EXT4 CPA_EXT4 CPS_EXT4 < <(rev_bench "$D/ext4")
read -r R_XFS CP_XFS CPA_XFS CPS_XFS < <(rev_bench "$D/xfs")

cat <<MD
| measurement | value | compared with | ratio | target |
|---|---|---|---|---|
| switch to another kept revision on btrfs (link + toolchain snapshot), 64 MiB machine | $(ms "$SMALL") ms | 4 GiB machine: $(ms "$BIG") ms | $(ratio "$BIG" "$SMALL")× | flat |
| new revision, dir backend on ext4 (no reflink), 300 MiB / 3,000 files | $(ms "$R_EXT4") ms | \`cp -a\`: $(ms "$CP_EXT4") ms; \`cp -a\` + \`sync\`: $(ms "$CPS_EXT4") ms | $(ratio "$R_EXT4" "$CP_EXT4")× / $(ratio "$R_EXT4" "$CPS_EXT4")× | report |
| new revision, dir backend on XFS with reflink | $(ms "$R_XFS") ms | \`cp -a --reflink=never\`: $(ms "$CP_XFS") ms; + \`sync\`: $(ms "$CPS_XFS") ms; \`--reflink=auto\`: $(ms "$CPA_XFS") ms | $(ratio "$R_XFS" "$CP_XFS")× / $(ratio "$R_XFS" "$CPS_XFS")× / $(ratio "$R_XFS" "$CPA_XFS")× | report |
| working snapshot create + delete on btrfs (library, 200 runs) | median $SNAP50 ms, p95 $SNAP95 ms | — | — | median < 20 ms |
| \`reconcile exec big -t tc -- /bin/true\` end to end (process, lock, snapshot, namespaces, cleanup) | $(ms "$EXEC") ms | — | — | report |
MD
