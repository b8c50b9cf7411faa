#!/usr/bin/env bash
# The command channel (issue 20), TCG here, the busybox test guest:
#   1. per-command cost: a test's run phase (phases.run_ms: from the request
#      to its exit status and both streams' ends) for `true`, over the
#      virtio-serial channel (transport = "agent") and typed on the serial
#      console (transport = "console"), one boot per run, medians of N each.
#   2. throughput of test stdout through the channel: 100 MB from `dd`, into
#      stdout.txt and the output checks; the peer is the same `dd` writing to
#      /dev/null inside the guest (what the guest can produce at all).
source "$(dirname "$0")/common.sh"
bench_setup
N=${RUNS:-7}
D=$DATA/channel
rm -rf "$D"; mkdir -p "$D/farm"
"$ROOT/tests/fixtures/make-guest.sh" "$ROOT/target/guest" >/dev/null
cp "$ROOT/target/guest/disk.img" "$D/farm/kit.img"
cat > "$D/farm/reconcile.toml" <<'TOML'
version = 1
[volume.default]
path = "machines"
backend = "dir"
[machine.agent]
revision = 1
kind = "disk"
source = { path = "kit.img" }
vm = { accel = "tcg", memory = "256M" }
console = { ready = 'kit: up', prompt = 'kit# ' }
[machine.console]
revision = 1
kind = "disk"
source = { path = "kit.img" }
vm = { accel = "tcg", memory = "256M", transport = "console" }
console = { ready = 'kit: up', prompt = 'kit# ' }
[suite.true]
machines = ["agent", "console"]
executor = "qemu"
[suite.true.test.true]
run = ["true"]
[suite.stream]
machines = ["agent"]
executor = "qemu"
[suite.stream.test.stdout]
run = ["dd", "if=/dev/zero", "bs=1048576", "count=100"]
[suite.stream.test.devnull]
run = ["dd", "if=/dev/zero", "of=/dev/null", "bs=1048576", "count=100"]
TOML
"$RECONCILE" -q apply --no-test -f "$D/farm/reconcile.toml" >/dev/null
run_ms() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['attempts'][0]['phases']['run_ms'])" "$1/result.json"; }
agent=(); console=(); out=(); null=()
for i in $(seq "$N"); do
    "$RECONCILE" -q test -j 1 -f "$D/farm/reconcile.toml" >/dev/null
    R=$D/farm/.reconcile/runs/latest
    agent+=("$(run_ms "$R/true.true[agent]")"); console+=("$(run_ms "$R/true.true[console]")")
    out+=("$(run_ms "$R/stream.stdout")"); null+=("$(run_ms "$R/stream.devnull")")
    [ "$(stat -c %s "$R/stream.stdout/stdout.txt")" = 104857600 ] || { echo "bench: stdout.txt is not 100 MiB" >&2; exit 1; }
done
A=$(med "${agent[@]}"); C=$(med "${console[@]}"); O=$(med "${out[@]}"); Z=$(med "${null[@]}")
mbs() { python3 -c "import sys; print(f'{104857600/(1<<20)/(float(sys.argv[1])/1000):.0f}')" "$1"; }
cat <<MD
| measurement (TCG, busybox guest, median of $N) | over the channel | peer | target |
|---|---|---|---|
| one command (\`true\`): request → status and both streams' ends | $A ms | typed on the serial console: $C ms | < 20 ms |
| 100 MiB of test stdout into stdout.txt and the output checks | $(mbs "$O") MB/s ($O ms) | the same \`dd\` to /dev/null in the guest: $(mbs "$Z") MB/s ($Z ms) | ≥ 50 MB/s |
MD
