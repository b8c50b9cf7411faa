#!/usr/bin/env bash
# Trust boundaries (issue 18), two figures:
#   1. peak RSS of `reconcile test` (GNU time's maximum resident set) while a
#      guest prints 1 GiB of console text in lines of 1 MiB, and one line of
#      200 MB without a newline: a stand-in qemu-system-x86_64 first on PATH
#      echoes what is typed and runs it; the test's command prints the flood.
#      Beside it: `cat` of the same stream (the floor), and with BEFORE=path
#      an older reconcile binary on the same farm.
#   2. a 1 GiB btrfs send stream received as a machine revision by `reconcile
#      apply` (digest checked on a private copy first, every command checked,
#      receive chrooted) vs plain `btrfs receive` of the same file, and
#      `sha256sum` of it (the verification pass alone). Needs root.
source "$(dirname "$0")/common.sh"
bench_setup
D=$DATA/trust
rm -rf "$D"; mkdir -p "$D/fake" "$D/farm"
N=${RUNS:-3}

# ---- 1. console memory ----
cat > "$D/fake/qemu-system-x86_64" <<'EOF'
#!/bin/sh
printf 'Linux version 6.1.0 (stand-in)\r\nkit: up\r\n'
while :; do
  printf 'kit# '
  IFS= read -r line || exit 0
  printf '%s\r\n' "$line"
  case "$line" in "printf '%s-B\n' "*|__rc=*) eval "$line" ;; esac
done
EOF
chmod +x "$D/fake/qemu-system-x86_64"
truncate -s 1M "$D/farm/kit.img"
cat > "$D/farm/reconcile.toml" <<'EOF'
version = 1
[settings]
log_limit = "2 GiB"
[volume.default]
path = "machines"
backend = "dir"
[machine.kit]
revision = 1
kind = "disk"
source = { path = "kit.img" }
vm = { accel = "tcg", memory = "64M" }
console = { ready = 'kit: up', prompt = 'kit# ', shutdown = "exit" }
[suite.vm]
machines = ["kit"]
executor = "qemu"
fresh = "boot"
[suite.vm.test.lines]
run = ["perl", "-e", "$l = 'x' x 1048575; print \"$l\\n\" for 1..1024"]
timeout = "20m"
[suite.vm.test.one-line]
run = ["sh", "-c", "head -c 200000000 /dev/zero | tr '\\0' y; echo"]
timeout = "20m"
EOF
PATH="$D/fake:$PATH" "$RECONCILE" -q apply --no-test -f "$D/farm/reconcile.toml" >/dev/null
rss() { # binary test [farm] → "peak-KiB seconds"
    local farm=${3:-$D/farm}
    PATH="$D/fake:$PATH" /usr/bin/time -o "$D/time.out" -f '%M %e' "$1" -q test -j 1 -f "$farm/reconcile.toml" "$2" >/dev/null 2>&1 || true
    tail -1 "$D/time.out"
}
mib() { python3 -c "import sys; print(f'{int(sys.argv[1])/1024:.1f}')" "$1"; }
read -r L_RSS L_S < <(rss "$RECONCILE" vm.lines)
read -r O_RSS O_S < <(rss "$RECONCILE" vm.one-line)
LOG=$(du -b "$D/farm/.reconcile/runs/latest/vm.one-line/console.txt" | cut -f1)
perl -e "\$l = 'x' x 1048575; print \"\$l\\n\" for 1..1024" | /usr/bin/time -o "$D/time.out" -f '%M %e' cat >/dev/null
read -r CAT_RSS _ < "$D/time.out"
BEFORE_ROW=""
if [ -n "${BEFORE:-}" ]; then
    # an older release knows no log_limit (and caps no log)
    mkdir -p "$D/farm-before"
    cp "$D/farm/kit.img" "$D/farm-before/"
    grep -v '^log_limit' "$D/farm/reconcile.toml" > "$D/farm-before/reconcile.toml"
    PATH="$D/fake:$PATH" "$BEFORE" -q apply --no-test -f "$D/farm-before/reconcile.toml" >/dev/null
    read -r BL _ < <(rss "$BEFORE" vm.lines "$D/farm-before")
    read -r BO _ < <(rss "$BEFORE" vm.one-line "$D/farm-before")
    BEFORE_ROW="| the same with \`$BEFORE\` | $(mib "$BL") MiB | $(mib "$BO") MiB | — |"
fi

cat <<MD
| peak RSS of \`reconcile test\` | 1 GiB in lines of 1 MiB | one 200 MB line | target |
|---|---|---|---|
| reconcile | $(mib "$L_RSS") MiB ($L_S s) | $(mib "$O_RSS") MiB ($O_S s; console.txt keeps $(mib $((LOG / 1024))) MiB of it) | < 64 MiB |
| \`cat\` of the same stream (the floor) | $(mib "$CAT_RSS") MiB | — | — |
$BEFORE_ROW
MD

# ---- 2. confined receive vs plain receive ----
if [ "$(id -u)" != 0 ]; then
    echo "(receive: needs root for a loop-mounted btrfs; skipped)"
    exit 0
fi
IMG=$D/btrfs.img
MNT=$D/mnt
truncate -s 12G "$IMG"; mkfs.btrfs -q -f "$IMG"; mkdir -p "$MNT"; mount -o loop "$IMG" "$MNT"
trap 'umount "$MNT" 2>/dev/null; rm -f "$IMG"' EXIT
btrfs -q subvolume create "$MNT/src"
head -c $((1 << 30)) /dev/urandom > "$MNT/src/data"
btrfs -q property set -ts "$MNT/src" ro true
btrfs -q send -f "$MNT/stream.btrfs" "$MNT/src" 2>/dev/null
SHA=$(sha256sum "$MNT/stream.btrfs" | cut -d' ' -f1)
sync
# every run starts cold: the stream is read from disk, not from the page cache the send left
t() { local s; sync; echo 3 > /proc/sys/vm/drop_caches; s=$(date +%s.%N); "$@" >/dev/null 2>&1; python3 -c "import sys; print(f'{float(sys.argv[2])-float(sys.argv[1]):.2f}')" "$s" "$(date +%s.%N)"; }
plain=(); confined=(); hashed=(); before=()
for i in $(seq "$N"); do
    mkdir -p "$MNT/plain-$i"
    sync
    # made durable, as reconcile makes a revision before it publishes it
    plain+=("$(t sh -c "btrfs receive -e '$MNT/plain-$i' -f '$MNT/stream.btrfs' && sync -f '$MNT/plain-$i'")")
    sync
    mkdir -p "$MNT/farm-$i"
    cat > "$MNT/farm-$i/reconcile.toml" <<EOF
version = 1
[volume.default]
path = "machines"
backend = "btrfs"
[machine.big]
revision = 1
source = { path = "$MNT/stream.btrfs", format = "btrfs-send", sha256 = "$SHA" }
EOF
    confined+=("$(t "$RECONCILE" -q apply -f "$MNT/farm-$i/reconcile.toml")")
    [ -d "$MNT/farm-$i/machines/big/big-1" ] || { echo "reconcile did not receive the stream" >&2; exit 1; }
    hashed+=("$(t sha256sum "$MNT/stream.btrfs")")
    if [ -n "${BEFORE:-}" ]; then
        btrfs -q subvolume delete "$MNT/farm-$i/machines/big/big-1" >/dev/null
        rm -rf "$MNT/farm-$i/machines" "$MNT/farm-$i/.reconcile"
        btrfs -q subvolume sync "$MNT" >/dev/null; sync
        before+=("$(t "$BEFORE" -q apply -f "$MNT/farm-$i/reconcile.toml")")
    fi
    btrfs -q subvolume delete "$MNT/plain-$i/src" >/dev/null
    btrfs -q subvolume delete "$MNT/farm-$i/machines/big/big-1" >/dev/null
    # the cleaner frees deleted subvolumes in the background: let it finish before the next run
    btrfs -q subvolume sync "$MNT" >/dev/null; sync
done
P=$(med "${plain[@]}"); C=$(med "${confined[@]}"); H=$(med "${hashed[@]}")
B_ROW=""
if [ -n "${BEFORE:-}" ]; then
    B=$(med "${before[@]}")
    B_ROW="| \`$BEFORE apply\` (hashed while fed, no checks, no chroot) | $B | $(ratio "$B" "$P")× |"
fi
cat <<MD

| receiving a 1 GiB send stream (medians of $N) | seconds | vs plain receive |
|---|---|---|
| \`btrfs receive\` of the file, then \`sync\` | $P | 1.00× |
| \`reconcile apply\` (private copy reflinked and hashed, every command checked, \`--chroot\`, published read-only) | $C | $(ratio "$C" "$P")× |
$B_ROW
| \`sha256sum\` of the file (coreutils) | $H | $(ratio "$H" "$P")× |
MD
