#!/usr/bin/env bash
# Promotion gates (issue 22), one run, dir backend, one machine (a busybox
# root filesystem, ~2 MiB), a gate suite of one host-executor test:
#   1. apply of a new revision, ungated vs gated (`promote = { after = ["smoke"] }`),
#      K revisions each (K=10), wall time median;
#   2. the gate suite alone (`reconcile test --suite smoke`), the same number of times;
#   3. the switch itself (gates[].switch_ms of apply --json: taking the lock,
#      the link's rename, dropping the candidate's record).
source "$(dirname "$0")/common.sh"
bench_setup
K=${REVISIONS:-10}
D=$DATA/promote
rm -rf "$D" && mkdir -p "$D/fixtures"
for i in $(seq 1 "$K"); do
    "$ROOT/tests/fixtures/make-rootfs.sh" "$D/fixtures/r$i" "r$i" >/dev/null
    tar -C "$D/fixtures/r$i" -czf "$D/fixtures/rootfs-$i.tar.gz" .
    rm -rf "$D/fixtures/r$i"
done
python3 - "$RECONCILE" "$D" "$K" <<'PY'
import json, os, shutil, statistics, subprocess, sys, time
reconcile, d, k = sys.argv[1], sys.argv[2], int(sys.argv[3])

def farm(mode):
    f = f"{d}/{mode}"
    shutil.rmtree(f, ignore_errors=True)
    os.makedirs(f)
    for i in range(1, k + 1):
        os.link(f"{d}/fixtures/rootfs-{i}.tar.gz", f"{f}/rootfs-{i}.tar.gz")
    return f

def declare(f, rev, gated):
    gate = 'promote = { after = ["smoke"] }\n' if gated else ""
    open(f"{f}/reconcile.toml", "w").write(
        'version = 1\n[volume.default]\npath = "machines"\nbackend = "dir"\n'
        f'[machine.deb]\nrevision = {rev}\nsource = {{ path = "rootfs-{rev}.tar.gz" }}\nkeep = 1\n{gate}'
        '[suite.smoke]\nmachines = ["deb"]\nexecutor = "host"\n'
        '[suite.smoke.test.os]\nrun = ["/bin/sh", "-c", "grep -q VERSION_ID etc/os-release"]\n')

def run(f, *args):
    t = time.perf_counter()
    p = subprocess.run([reconcile, "-f", f"{f}/reconcile.toml", *args], capture_output=True, text=True)
    took = (time.perf_counter() - t) * 1000
    if p.returncode != 0:
        raise SystemExit(f"{args}: exit {p.returncode}: {p.stdout}{p.stderr}")
    return took, p.stdout

res = {}
switch = []
for mode in ["ungated", "gated"]:
    f = farm(mode)
    declare(f, 1, mode == "gated")
    run(f, "apply", "--json")
    times = []
    for rev in range(2, k + 1):
        declare(f, rev, mode == "gated")
        took, out = run(f, "apply", "--json")
        times.append(took)
        if mode == "gated":
            g = json.loads(out)["gates"][0]
            assert g["result"] == "promoted", g
            switch.append(g["switch_ms"])
        assert os.readlink(f"{f}/machines/deb/deb") == f"deb-{rev}"
    res[mode] = times
suite = [run(f"{d}/gated", "test", "--suite", "smoke")[0] for _ in range(k - 1)]
u, g, s = (statistics.median(res["ungated"]), statistics.median(res["gated"]), statistics.median(suite))
print(f"| {k-1} new revisions, median | ms |")
print("|---|---|")
print(f"| apply, ungated (build, switch) | {u:.0f} |")
print(f"| apply, gated (build, test the candidate, switch) | {g:.0f} |")
print(f"| gated − ungated | {g-u:.0f} |")
print(f"| the gate suite alone (`reconcile test --suite smoke`) | {s:.0f} |")
print(f"| the switch (lock, rename, record), median / max | {statistics.median(switch):.2f} / {max(switch):.2f} |")
PY
