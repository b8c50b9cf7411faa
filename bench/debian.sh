#!/usr/bin/env bash
# Boot of the real Debian 12 guest (tests/fixtures/make-debian.sh), TCG,
# 1 GiB, BIOS: QEMU started → logged in at the shell prompt on the serial
# console. reconcile: a test's phases.boot_ms with transport = "console" (the
# boot and the login, nothing after); and with the default agent transport
# (the agent typed and answering, too). Peer: bare qemu-system-x86_64 with the
# same command line (from qemu.log) on a fresh overlay, driven by a small
# Python reader that answers login: and Password: and stops at the prompt.
# Runs alternate, medians of N each (TCG boots of this guest take ~70 s).
source "$(dirname "$0")/common.sh"
bench_setup
N=${RUNS:-3}
D=$DATA/debian
rm -rf "$D"; mkdir -p "$D/farm"
"$ROOT/tests/fixtures/make-debian.sh" "$ROOT/target/debian-guest"
ln "$ROOT/target/debian-guest/debian.qcow2" "$D/farm/debian.qcow2" 2>/dev/null || cp "$ROOT/target/debian-guest/debian.qcow2" "$D/farm/"
cat > "$D/farm/reconcile.toml" <<'TOML'
version = 1
[volume.default]
path = "machines"
backend = "dir"
[machine.console]
revision = 1
kind = "disk"
source = { path = "debian.qcow2" }
vm = { accel = "tcg", memory = "1G", transport = "console" }
console = { login = { user = "root", password = "debpass" } }
[machine.agent]
revision = 1
kind = "disk"
source = { path = "debian.qcow2" }
vm = { accel = "tcg", memory = "1G" }
console = { login = { user = "root", password = "debpass" } }
[suite.console]
machines = ["console"]
executor = "qemu"
fresh = "boot"
[suite.console.test.true]
run = ["true"]
[suite.agent]
machines = ["agent"]
executor = "qemu"
fresh = "boot"
[suite.agent.test.true]
run = ["true"]
TOML
"$RECONCILE" -q apply --no-test -f "$D/farm/reconcile.toml" >/dev/null
cat > "$D/bare.py" <<'PY'
import re, shlex, subprocess, sys, time
argv = shlex.split(open(sys.argv[1]).readline()[2:])
t0 = time.monotonic()
p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
seen, state = b"", 0
while True:
    chunk = p.stdout.read1(65536)
    if not chunk:
        sys.exit("QEMU exited before the prompt")
    seen = (seen + chunk)[-4096:]
    line = seen.rsplit(b"\n", 1)[-1]
    if state == 0 and re.search(rb"login:\s*$", line, re.I):
        p.stdin.write(b"root\n"); p.stdin.flush(); state, seen = 1, b""
    elif state == 1 and re.search(rb"password:\s*$", line, re.I):
        p.stdin.write(b"debpass\n"); p.stdin.flush(); state, seen = 2, b""
    elif state == 2 and re.search(rb"[#$] $", line):
        break
print(time.monotonic() - t0)
p.kill(); p.wait()
PY
boot_ms() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['attempts'][0]['phases']['boot_ms'])" "$1/result.json"; }
console=(); agent=(); bare=()
recon() {
    "$RECONCILE" -q test -j 1 -f "$D/farm/reconcile.toml" >/dev/null
    R=$D/farm/.reconcile/runs/latest
    console+=("$(boot_ms "$R/console.true")"); agent+=("$(boot_ms "$R/agent.true")")
}
bare_run() {
    R=$D/farm/.reconcile/runs/latest/console.true
    base=$D/farm/machines/console/console-1/disk.qcow2
    overlay=$(sed -n '1s/.*file=\([^,]*\),.*/\1/p' "$R/qemu.log")
    mkdir -p "$(dirname "$overlay")"
    qemu-img create -q -f qcow2 -u -F qcow2 -b "$base" "$overlay" "$(qemu-img info --output=json "$base" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')"
    bare+=("$(python3 "$D/bare.py" "$R/qemu.log" | python3 -c 'import sys; print(round(float(sys.stdin.read())*1000))')")
    rm -rf "$(dirname "$overlay")"
}
recon; console=(); agent=() # a qemu.log to take the command line from
for i in $(seq "$N"); do
    if ((i % 2)); then recon; bare_run; else bare_run; recon; fi
done
C=$(med "${console[@]}"); A=$(med "${agent[@]}"); B=$(med "${bare[@]}")
cat <<MD
| Debian 12 guest, TCG, 1 GiB, BIOS, median of $N | reconcile | bare \`qemu-system-x86_64\` (same command line, a Python reader logging in) | ratio | target |
|---|---|---|---|---|
| QEMU started → logged in at the prompt (transport = "console") | $C ms | $B ms | $(ratio "$C" "$B")× | within 5% |
| … and the agent typed and answering (transport = "agent", the default) | $A ms | — | $(ratio "$A" "$B")× | — |
MD
