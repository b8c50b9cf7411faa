#!/usr/bin/env bash
# Fresh machines by restore (issue 21) vs by boot, TCG, one run:
#   1. a fresh machine: phases.boot_ms of tests restored from the booted
#      snapshot (made beforehand) vs of tests that boot, busybox guest
#      (256 MiB) and the Debian 12 guest (1 GiB);
#   2. a suite of T one-second tests on each guest, `-j 2`: wall time with
#      fresh = "restore" (snapshot made beforehand) vs fresh = "boot" (a
#      boot per test, as kola does on QEMU);
#      and bare qemu-system booting once per test (kola's way, bench/kola_way.py,
#      the Debian guest);
#   3. the size on disk of a state file and of a frozen overlay;
#   4. a cluster of 3 (cluster = 3, restored): time until every node is
#      ready (phases.boot_ms) vs one node.
source "$(dirname "$0")/common.sh"
bench_setup
T=${TESTS:-20}
D=$DATA/restore
rm -rf "$D"; mkdir -p "$D/farm"
"$ROOT/tests/fixtures/make-guest.sh" "$ROOT/target/guest" >/dev/null
"$ROOT/tests/fixtures/make-debian.sh" "$ROOT/target/debian-guest"
cp "$ROOT/target/guest/disk.img" "$D/farm/kit.img"
ln "$ROOT/target/debian-guest/debian.qcow2" "$D/farm/debian.qcow2" 2>/dev/null || cp "$ROOT/target/debian-guest/debian.qcow2" "$D/farm/"
{
    printf 'version = 1\n[volume.default]\npath = "machines"\nbackend = "dir"\n'
    printf '[machine.kit]\nrevision = 1\nkind = "disk"\nsource = { path = "kit.img" }\nvm = { accel = "tcg", memory = "256M" }\n'
    printf "console = { ready = 'kit: up', prompt = 'kit# ' }\n"
    printf '[machine.deb]\nrevision = 1\nkind = "disk"\nsource = { path = "debian.qcow2" }\nvm = { accel = "tcg", memory = "1G" }\n'
    printf 'console = { login = { user = "root", password = "debpass" } }\n'
    # the same guest over the console only: its qemu.log gives kola_way.py its command line
    printf '[machine.debc]\nrevision = 1\nkind = "disk"\nsource = { path = "debian.qcow2" }\nvm = { accel = "tcg", memory = "1G", transport = "console" }\n'
    printf 'console = { login = { user = "root", password = "debpass" } }\n'
    printf '[suite.debc]\nmachines = ["debc"]\nexecutor = "qemu"\nfresh = "boot"\n[suite.debc.test.t]\nrun = ["true"]\n'
    for m in kit deb; do
        printf '[suite.%s-cluster]\nmachines = ["%s"]\nexecutor = "qemu"\ncluster = 3\n[suite.%s-cluster.test.t]\nrun = ["true"]\n' "$m" "$m" "$m"
    done
    for m in kit deb; do
        for f in restore boot; do
            printf '[suite.%s-%s]\nmachines = ["%s"]\nexecutor = "qemu"\nfresh = "%s"\n' "$m" "$f" "$m" "$f"
            for i in $(seq "$T"); do printf '[suite.%s-%s.test.t%s]\nrun = ["sleep", "1"]\n' "$m" "$f" "$i"; done
        done
    done
} >"$D/farm/reconcile.toml"
"$RECONCILE" -q apply --no-test -f "$D/farm/reconcile.toml" >/dev/null
R=$D/farm/.reconcile/runs/latest
boots() { for d in "$R"/"$1".t*; do python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['attempts'][0]['phases']['boot_ms'])" "$d/result.json"; done; }
wall() { local t0 t1; t0=$(date +%s%N); "$RECONCILE" -q test -j 2 -f "$D/farm/reconcile.toml" --suite "$1" >/dev/null; t1=$(date +%s%N); echo $(((t1 - t0) / 1000000)); }
declare -A W B
for m in kit deb; do
    # the booted snapshot, made once (not measured)
    "$RECONCILE" -q test -j 1 -f "$D/farm/reconcile.toml" "$m-restore.t1" >/dev/null
    for f in restore boot; do
        W[$m-$f]=$(wall "$m-$f")
        B[$m-$f]=$(med $(boots "$m-$f"))
    done
done
# kola's way: bare qemu-system, a boot per test, the console machine's command line
"$RECONCILE" -q test -j 1 -f "$D/farm/reconcile.toml" --suite debc >/dev/null
W[kola]=$(python3 "$ROOT/bench/kola_way.py" "$R/debc.t/qemu.log" "$D/farm/machines/debc/debc-1/disk.qcow2" "$T" 2 root debpass "sleep 1")
# a cluster of 3 vs one node, both restored (the cluster's snapshot made first)
declare -A CL
for m in kit deb; do
    "$RECONCILE" -q test -j 1 -f "$D/farm/reconcile.toml" --suite "$m-cluster" >/dev/null
    c=(); for i in 1 2 3; do
        "$RECONCILE" -q test -j 1 -f "$D/farm/reconcile.toml" --suite "$m-cluster" >/dev/null
        c+=("$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['attempts'][0]['phases']['boot_ms'])" "$R/$m-cluster.t/result.json")")
    done
    CL[$m]=$(med "${c[@]}")
done
size() { du -m --apparent-size "$1" | cut -f1; }
alloc() { du -m "$1" | cut -f1; }
kit_dir=$(ls -d "$D"/farm/.reconcile/booted/kit/*/ | head -1)
deb_dir=$(ls -d "$D"/farm/.reconcile/booted/deb/*/ | head -1)
cat <<MD
| TCG, one run, -j 2, $T tests of \`sleep 1\` per suite | busybox guest (256 MiB) | Debian 12 guest (1 GiB) | target |
|---|---|---|---|
| a fresh machine by restore (median boot_ms) | ${B[kit-restore]} ms | ${B[deb-restore]} ms | ≤ 1,500 ms (512 MiB) |
| a fresh machine by boot (median boot_ms) | ${B[kit-boot]} ms | ${B[deb-boot]} ms | — |
| restore vs boot | $(ratio "${B[kit-boot]}" "${B[kit-restore]}")× faster | $(ratio "${B[deb-boot]}" "${B[deb-restore]}")× faster | ≥ 10× (Debian) |
| the suite, fresh = "restore" (wall) | ${W[kit-restore]} ms | ${W[deb-restore]} ms | — |
| the suite, fresh = "boot" (wall; reconcile booting per test) | ${W[kit-boot]} ms | ${W[deb-boot]} ms | — |
| restore vs boot, wall | $(ratio "${W[kit-boot]}" "${W[kit-restore]}")× less | $(ratio "${W[deb-boot]}" "${W[deb-restore]}")× less | ≥ 8× (Debian, 20 tests) |
| the suite, bare qemu-system booting once per test (kola's way, wall) | — | ${W[kola]} ms | — |
| restore vs kola's way, wall | — | $(ratio "${W[kola]}" "${W[deb-restore]}")× less | — |
| a cluster of 3, restored: all nodes ready (median of 3) | ${CL[kit]} ms | ${CL[deb]} ms | — |
| … vs one node restored | $(ratio "${CL[kit]}" "${B[kit-restore]}")× | $(ratio "${CL[deb]}" "${B[deb-restore]}")× | — |
| state file (apparent / allocated) | $(size "$kit_dir/state") / $(alloc "$kit_dir/state") MiB | $(size "$deb_dir/state") / $(alloc "$deb_dir/state") MiB | — |
| frozen overlay (allocated) | $(alloc "$kit_dir/disk.qcow2") MiB | $(alloc "$deb_dir/disk.qcow2") MiB | — |
MD
