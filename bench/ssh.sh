#!/usr/bin/env bash
# The ssh transport (issue 20) beside the agent and the serial console, on
# the real Debian 12 guest (tests/fixtures/make-debian.sh), TCG, 1 GiB:
#   1. ready for commands after a restore: phases.boot_ms (QEMU loading the
#      saved state → the transport up again: for ssh a new master connection
#      with the saved key, for the agent a `true` answered on new sockets);
#   2. one command (`true`): phases.run_ms, request → status and both streams;
#   3. 100 MiB of test stdout from `dd` into stdout.txt and the checks.
# Each machine booted and saved once (not measured), -j 1, medians of N runs.
source "$(dirname "$0")/common.sh"
bench_setup
N=${RUNS:-3}
D=$DATA/ssh
rm -rf "$D"; mkdir -p "$D/farm"
"$ROOT/tests/fixtures/make-debian.sh" "$ROOT/target/debian-guest"
ln "$ROOT/target/debian-guest/debian.qcow2" "$D/farm/debian.qcow2" 2>/dev/null || cp "$ROOT/target/debian-guest/debian.qcow2" "$D/farm/"
{
    echo 'version = 1'
    printf '[volume.default]\npath = "machines"\nbackend = "dir"\n'
    for t in agent ssh console; do
        printf '[machine.%s]\nrevision = 1\nkind = "disk"\nsource = { path = "debian.qcow2" }\n' "$t"
        printf 'vm = { accel = "tcg", memory = "1G", transport = "%s" }\n' "$t"
        printf 'console = { login = { user = "root", password = "debpass" } }\n'
    done
    printf '[suite.true]\nmachines = ["agent", "ssh", "console"]\nexecutor = "qemu"\n[suite.true.test.true]\nrun = ["true"]\n'
    printf '[suite.stream]\nmachines = ["agent", "ssh"]\nexecutor = "qemu"\n[suite.stream.test.stdout]\nrun = ["dd", "if=/dev/zero", "bs=1048576", "count=100"]\ntimeout = "10m"\n'
} >"$D/farm/reconcile.toml"
"$RECONCILE" -q apply --no-test -f "$D/farm/reconcile.toml" >/dev/null
# fresh = "restore" (the default): the first run boots each machine once and
# saves it; the runs measured restore it (boot_ms: the restore and the
# transport back: the agent answering on new sockets, ssh connecting anew)
"$RECONCILE" -q test -j 1 -f "$D/farm/reconcile.toml" >/dev/null
phase() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['attempts'][0]['phases'][sys.argv[2]])" "$1/result.json" "$2"; }
declare -A boot run stream
for i in $(seq "$N"); do
    "$RECONCILE" -q test -j 1 -f "$D/farm/reconcile.toml" >/dev/null
    R=$D/farm/.reconcile/runs/latest
    for t in agent ssh console; do
        boot[$t]+=" $(phase "$R/true.true[$t]" boot_ms)"
        run[$t]+=" $(phase "$R/true.true[$t]" run_ms)"
    done
    for t in agent ssh; do
        [ "$(stat -c %s "$R/stream.stdout[$t]/stdout.txt")" = 104857600 ] || { echo "bench: stdout.txt over $t is not 100 MiB" >&2; exit 1; }
        stream[$t]+=" $(phase "$R/stream.stdout[$t]" run_ms)"
    done
done
m() { med ${1}; }
mbs() { python3 -c "import sys; print(f'{104857600/(1<<20)/(float(sys.argv[1])/1000):.0f}')" "$1"; }
cat <<MD
| Debian 12 guest, TCG, 1 GiB, median of $N | transport = "ssh" | "agent" (default) | "console" | target |
|---|---|---|---|---|
| restore → ready for commands | $(m "${boot[ssh]}") ms | $(m "${boot[agent]}") ms | $(m "${boot[console]}") ms | — |
| one command (\`true\`) | $(m "${run[ssh]}") ms | $(m "${run[agent]}") ms | $(m "${run[console]}") ms | < 20 ms |
| 100 MiB of test stdout | $(mbs "$(m "${stream[ssh]}")") MB/s | $(mbs "$(m "${stream[agent]}")") MB/s | — | ≥ 50 MB/s |
MD
