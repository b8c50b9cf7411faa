#!/usr/bin/env bash
# QEMU executor benchmark (issue 10); TCG here (no vmx/svm):
#   1. boot to the prompt: reconcile (a test's phases.boot_ms: QEMU started →
#      prompt seen by the console driver) vs bare qemu-system-x86_64 with the
#      same command line (taken from qemu.log) read by a minimal reader until
#      the same prompt; runs alternate, medians of N each.
#   2. per-test overhead on a disk machine beyond the guest's boot: making the
#      working snapshot (lock, receipt, qcow2 overlay) + teardown (kill QEMU,
#      delete the overlay), medians over the same runs.
#   3. console check throughput: a stand-in qemu-system-x86_64 first on PATH
#      prints 512 MiB of console text, then a prompt; `reconcile test` streams
#      it through the console driver, console.txt and every check before the
#      prompt. Peers on the same file: `cat > /dev/null` and `grep -E` with
#      every built-in pattern.
source "$(dirname "$0")/common.sh"
bench_setup
N=${RUNS:-9}
D=$DATA/qemu
rm -rf "$D"; mkdir -p "$D/farm" "$D/fake"
"$ROOT/tests/fixtures/make-guest.sh" "$ROOT/target/guest" >/dev/null
cp "$ROOT/target/guest/disk.img" "$D/farm/kit.img"
cat > "$D/farm/reconcile.toml" <<'EOF'
version = 1
[volume.default]
path = "machines"
backend = "dir"
[machine.kit]
revision = 1
kind = "disk"
source = { path = "kit.img" }
vm = { accel = "tcg", memory = "256M", transport = "console" }  # boot to the prompt, as the bare reader; bench/channel.sh measures the agent
console = { ready = 'kit: up', prompt = 'kit# ' }
[suite.vm]
machines = ["kit"]
executor = "qemu"
fresh = "boot"
[suite.vm.test.true]
run = ["true"]
EOF
"$RECONCILE" -q apply --no-test -f "$D/farm/reconcile.toml" >/dev/null

# the bare reader: start QEMU, read the serial console until the prompt, report seconds
cat > "$D/bare.py" <<'PY'
import shlex, subprocess, sys, time
argv = shlex.split(open(sys.argv[1]).readline()[2:])
t0 = time.monotonic()
p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
seen = b""
while b"kit: up" not in seen or not seen.rstrip(b"\x1b[6n").endswith(b"kit# "):
    chunk = p.stdout.read1(65536)
    if not chunk:
        sys.exit("QEMU exited before the prompt")
    seen = seen[-4096:] + chunk
print(time.monotonic() - t0)
p.kill(); p.wait()
PY

# one reconcile run (phases from its result) and one bare run of the same command line
reconcile_run() {
    "$RECONCILE" -q test -f "$D/farm/reconcile.toml" >/dev/null
    R=$D/farm/.reconcile/runs/latest/vm.true
    read -r b p t < <(python3 -c "import json,sys; a=json.load(open(sys.argv[1]))['attempts'][0]['phases']; print(a['boot_ms'], a['provision_ms'], a['teardown_ms'])" "$R/result.json")
    boots+=("$b"); prov+=("$p"); down+=("$t")
}
bare_run() {
    # the command line of the last reconcile run, on a fresh overlay of the same revision
    R=$D/farm/.reconcile/runs/latest/vm.true
    base=$D/farm/machines/kit/kit-1/disk.img
    overlay=$(sed -n '1s/.*file=\([^,]*\),.*/\1/p' "$R/qemu.log")
    mkdir -p "$(dirname "$overlay")"
    qemu-img create -q -f qcow2 -u -F raw -b "$base" "$overlay" "$(stat -c %s "$base")"
    bare+=("$(python3 "$D/bare.py" "$R/qemu.log" | python3 -c 'import sys; print(round(float(sys.stdin.read())*1000))')")
    rm -rf "$(dirname "$overlay")"
}
boots=(); bare=(); prov=(); down=()
reconcile_run; boots=(); prov=(); down=() # warm-up, and a qemu.log to take the command line from
# TCG boots vary by ±10% run to run: alternate which goes first
for i in $(seq "$N"); do
    if ((i % 2)); then reconcile_run; bare_run; else bare_run; reconcile_run; fi
done
BOOT=$(med "${boots[@]}"); BARE=$(med "${bare[@]}"); PROV=$(med "${prov[@]}"); DOWN=$(med "${down[@]}")

# 3. console throughput through the driver, with a stand-in QEMU
python3 - "$D/console.log" <<'PY'
import sys
lines = [
    "[    0.000000] Linux version 6.1.0-18-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1",
    "[    0.512000] systemd[1]: Started systemd-journald.service - Journal Service.",
    "[    0.700000] EXT4-fs (vda1): mounted filesystem with ordered data mode. Quota mode: none.",
    "[    1.000000] audit: type=1400 audit(1700000000.123:2): apparmor=\"STATUS\" operation=\"profile_load\" name=\"lsb_release\"",
    "[    1.100000] virtio_net virtio1 enp1s0: renamed from eth0",
    "[    1.200000] systemd[1]: Reached target multi-user.target - Multi-User System.",
    "[    1.300000] kola-agent[500]: running test step 17 of 40: ok",
]
block = ("\r\n".join(lines) + "\r\n").encode()
with open(sys.argv[1], "wb") as f:
    for _ in range((512 << 20) // len(block)):
        f.write(block)
    f.write(b"kit: up\r\n")
PY
cat > "$D/fake/qemu-system-x86_64" <<'EOF'
#!/bin/sh
# stands in for QEMU: a console of $BENCH_CONSOLE, then a shell that answers typed commands
cat "$BENCH_CONSOLE"
printf 'kit# '
while IFS= read -r line; do
    nonce=$(printf '%s\n' "$line" | sed -n "s/^printf '%s-B\\\\n' \([0-9a-f]*\);.*/\1/p")
    [ -n "$nonce" ] && printf '%s-B\r\n%s-0-\r\nkit# ' "$nonce" "$nonce"
done
EOF
chmod +x "$D/fake/qemu-system-x86_64"
BYTES=$(stat -c %s "$D/console.log")
PATH="$D/fake:$PATH" BENCH_CONSOLE="$D/console.log" "$RECONCILE" -q test -f "$D/farm/reconcile.toml" >/dev/null
STREAM=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['attempts'][0]['phases']['boot_ms'])" "$D/farm/.reconcile/runs/latest/vm.true/result.json")
builtin_ere > "$D/patterns.ere"
hyperfine -N --warmup 1 --runs 3 --export-json "$D/peers.json" \
    -n "cat > /dev/null" "sh -c 'cat $D/console.log > /dev/null'" \
    -n "grep -E (built-in patterns)" "grep -E -c -f $D/patterns.ere $D/console.log" -i >/dev/null
CAT=$(mean "$D/peers.json" 0); GREP=$(mean "$D/peers.json" 1)
rm -f "$D/console.log"
mbs() { python3 -c "import sys; print(f'{float(sys.argv[1])/(1<<20)/float(sys.argv[2]):.0f}')" "$1" "$2"; }

cat <<MD
| measurement | reconcile | peer | ratio | target |
|---|---|---|---|---|
| boot to the prompt, BIOS disk (SeaBIOS → syslinux → Linux 6.1 → busybox), TCG, median of $N | $BOOT ms | bare \`qemu-system-x86_64\`, same command line: $BARE ms | $(ratio "$BOOT" "$BARE")× ($(python3 -c "print($BOOT-$BARE)") ms) | within 5% or 300 ms |
| per-test overhead on a disk machine: working snapshot (lock, receipt, qcow2 overlay) + teardown (kill QEMU, delete overlay), median | $(python3 -c "print($PROV+$DOWN)") ms ($PROV + $DOWN) | — | — | < 100 ms |
| console text through the driver, console.txt and every check (512 MiB) | $(mbs "$BYTES" "$(python3 -c "print($STREAM/1000)")") MB/s ($STREAM ms) | \`cat\`: $(mbs "$BYTES" "$CAT") MB/s, \`grep -E\`: $(mbs "$BYTES" "$GREP") MB/s | — | ≥ 100 MB/s |
MD
