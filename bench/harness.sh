#!/usr/bin/env bash
# Test harness benchmark (issue 5):
#   1. overhead per test, host executor: 200 trivial tests at -j 2 vs a bare shell loop of the same commands
#   2. overhead per test, namespace executor on btrfs: snapshot, run, cleanup (median over 100 tests; root)
#   3. `reconcile checks` over a 1 GiB console log with all built-in checks vs `grep -E` with the same patterns
source "$(dirname "$0")/common.sh"
bench_setup
D=$DATA/harness
cleanup() { umount "$D/btrfs" 2>/dev/null || true; }
trap cleanup EXIT
cleanup; rm -rf "$D"; mkdir -p "$D/host"

# 1. host executor
{
    echo "version = 1"
    echo "[suite.t]"
    for i in $(seq -w 1 200); do printf '[suite.t.test.t%s]\nrun = ["/bin/true"]\n' "$i"; done
} > "$D/host/reconcile.toml"
hyperfine -N --warmup 2 --runs 10 --export-json "$D/host.json" \
    -n "reconcile test -j 2 (200 tests)" "$RECONCILE -q test -f $D/host/reconcile.toml -j 2" \
    -n "shell loop (200 × /bin/true)" "sh -c 'for i in \$(seq 200); do /bin/true; done'" >/dev/null
HARNESS=$(mean "$D/host.json" 0); LOOP=$(mean "$D/host.json" 1)

# 2. namespace executor on btrfs
NS="n/a (needs root)"
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$D/btrfs" && truncate -s 2G "$D/btrfs.img" && mkfs.btrfs -q -f "$D/btrfs.img" >/dev/null && mount -o loop "$D/btrfs.img" "$D/btrfs"
    B=$D/btrfs
    "$ROOT/tests/fixtures/make-rootfs.sh" "$B/rootfs" r1 >/dev/null
    {
        printf 'version = 1\n[volume.default]\npath = "machines"\nbackend = "btrfs"\n[machine.m]\nrevision = 1\nsource = { dir = "rootfs" }\n'
        printf '[machine.m.toolchain.tc]\nbootstrap = ["/bin/true"]\n[suite.ns]\nmachines = ["m"]\ntoolchain = "tc"\nexecutor = "namespace"\n'
        for i in $(seq -w 1 100); do printf '[suite.ns.test.t%s]\nrun = ["/bin/true"]\n' "$i"; done
    } > "$B/reconcile.toml"
    "$RECONCILE" -q apply --no-test -f "$B/reconcile.toml" >/dev/null
    "$RECONCILE" -q test -f "$B/reconcile.toml" -j 1 >/dev/null
    NS=$(python3 -c "import json,statistics,sys; r=json.load(open(sys.argv[1])); print(f\"{statistics.median(t['duration_ms'] for t in r['tests']):.0f} ms\")" "$B/.reconcile/runs/latest/report.json")
fi

# 3. console checks over 1 GiB
python3 - "$D/console.log" <<'PY'
import sys
boot = open(sys.argv[1] + ".seed", "w") if False else None
lines = [
    "[    0.000000] Linux version 6.1.0-18-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1",
    "[    0.000000] Command line: BOOT_IMAGE=/boot/vmlinuz root=/dev/vda1 ro console=ttyS0 panic=10 oops=panic",
    "[    0.512000] systemd[1]: Started systemd-journald.service - Journal Service.",
    "[    0.700000] EXT4-fs (vda1): mounted filesystem with ordered data mode. Quota mode: none.",
    "[    1.000000] audit: type=1400 audit(1700000000.123:2): apparmor=\"STATUS\" operation=\"profile_load\" name=\"lsb_release\"",
    "[    1.100000] virtio_net virtio1 enp1s0: renamed from eth0",
    "[    1.200000] systemd[1]: Reached target multi-user.target - Multi-User System.",
    "[    1.300000] kola-agent[500]: running test step 17 of 40: ok",
]
block = ("\n".join(lines) + "\n").encode()
target = 1 << 30
with open(sys.argv[1], "wb") as f:
    written = 0
    i = 0
    while written < target:
        f.write(block)
        written += len(block)
        i += 1
        if i % 500000 == 0:
            f.write(b"[  999.000000] myapp[311]: segfault at 0 ip 000055d1c0de1234 sp 00007ffc0ffee000 error 4 in myapp\n")
PY
builtin_ere > "$D/patterns.ere"
hyperfine -N --warmup 1 --runs 5 --export-json "$D/checks.json" \
    -n "reconcile checks (1 GiB)" "$RECONCILE checks $D/console.log" \
    -n "grep -E -n (same patterns)" "grep -E -n -f $D/patterns.ere $D/console.log" -i >/dev/null
CHECKS=$(mean "$D/checks.json" 0); GREP=$(mean "$D/checks.json" 1)
rm -f "$D/console.log"

cat <<MD
| measurement | reconcile | peer | ratio | target |
|---|---|---|---|---|
| 200 trivial tests, host executor, -j 2 | $(ms "$HARNESS") ms ($(python3 -c "print(f'{$HARNESS*1000/200:.2f}')") ms/test) | shell loop: $(ms "$LOOP") ms | $(ratio "$HARNESS" "$LOOP")× | ≤ 2× |
| per test, namespace executor on btrfs (snapshot, run, cleanup), median of 100 | $NS | — | — | < 20 ms |
| \`checks\` over a 1 GiB console log, all built-in checks | $(ms "$CHECKS") ms | \`grep -E\`: $(ms "$GREP") ms | $(ratio "$CHECKS" "$GREP")× | ≤ 1.5× |
MD
