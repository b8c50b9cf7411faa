#!/usr/bin/env bash
# Publishing a disk machine revision to an EC2-compatible cloud (issue 11):
# upload throughput with N blocks in flight against 1, in one run, and the
# zero-block skip ratio. The cloud is a real moto server on 127.0.0.1 (from
# target/venv, as the tests use it); the disk is a 1 GiB sparse image with
# 64 MiB of random data in 128 runs of 512 KiB (plus a few partial blocks).
#   reconcile apply   the publish step alone (the machine is stored once, moto
#                     is reset before each run): "uploaded … blocks/s" as it
#                     reports it, and the wall time of the whole apply
#   boto3             the same non-zero blocks put with a thread pool of N
#                     (StartSnapshot, PutSnapshotBlock × blocks, CompleteSnapshot)
# moto keeps blocks in memory and answers in Python on the same 2 cores, so
# the direct figures measure a CPU-bound local server. A real region is a
# round trip away: the second table puts a proxy in front of moto that holds
# every request for DELAY_MS (default 20 ms) before forwarding it.
source "$(dirname "$0")/common.sh"
bench_setup
RUNS=${RUNS:-3}
INFLIGHT=${INFLIGHT:-1 4 8 16}
VENV=$ROOT/target/venv/bin
if [ ! -x "$VENV/moto_server" ]; then
    echo "bench: needs moto in target/venv (scripts/test installs it)" >&2
    exit 1
fi
D=$DATA/cloud
rm -rf "$D" && mkdir -p "$D"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
"$VENV/moto_server" -H 127.0.0.1 -p "$PORT" >"$D/moto.log" 2>&1 &
MOTO=$!
trap 'kill $MOTO 2>/dev/null' EXIT
for _ in $(seq 100); do curl -sf "$URL/moto-api/" >/dev/null && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=AKIDBENCH AWS_SECRET_ACCESS_KEY=bench AWS_EC2_METADATA_DISABLED=true

python3 - "$D/disk.img" <<'PY'
import os, sys
with open(sys.argv[1], "wb") as f:
    f.truncate(1 << 30)
    for i in range(128):  # 64 MiB in 512 KiB runs, spread over the disk
        f.seek(i * (8 << 20))
        f.write(os.urandom(512 << 10))
    for off in (5 << 20, (700 << 20) + 12345, (1 << 30) - 4096):  # partial blocks
        f.seek(off)
        f.write(os.urandom(4096))
PY

# a proxy that adds a fixed delay to every request (a region's round trip)
"$VENV/python3" - "$PORT" "${DELAY_MS:-20}" >"$D/proxy.log" 2>&1 <<'PY' &
import http.client, http.server, socketserver, sys, time
up, delay = int(sys.argv[1]), int(sys.argv[2]) / 1000
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def handle_one(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        time.sleep(delay)
        c = http.client.HTTPConnection("127.0.0.1", up)
        c.request(self.command, self.path, body, {k: v for k, v in self.headers.items() if k.lower() != "host"})
        r = c.getresponse()
        data = r.read()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(k, v)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    do_GET = do_PUT = do_POST = do_DELETE = handle_one
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
s = S(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
PY
PROXY=$!
trap 'kill $MOTO $PROXY 2>/dev/null' EXIT
for _ in $(seq 100); do [ -s "$D/proxy.log" ] && break; sleep 0.1; done
SLOW=http://127.0.0.1:$(head -1 "$D/proxy.log")

declare_farm() {
    cat >"$D/farm.toml" <<EOF
version = 1
[volume.default]
path = "vol"
backend = "dir"
[cloud.bench]
provider = "ec2"
region = "us-east-1"
endpoint = "$2"
uploads_in_flight = $1
[machine.kit]
kind = "disk"
revision = 1
source = { path = "disk.img" }
clouds = ["bench"]
EOF
}
reset() { curl -sf -X POST "$URL/moto-api/reset" >/dev/null; }

declare_farm 1 "$URL"
"$RECONCILE" -q apply -f "$D/farm.toml" --target machine.kit >/dev/null

boto_upload() {
    "$VENV/python3" - "$2" "$D/disk.img" "$1" <<'PY'
import base64, hashlib, sys, time
from concurrent.futures import ThreadPoolExecutor
import boto3
url, disk, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
ebs = boto3.client("ebs", region_name="us-east-1", endpoint_url=url)
B = 512 << 10
f = open(disk, "rb")
t0 = time.time()
snap = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
zero = bytes(B)
def blocks():
    i = 0
    while True:
        data = f.read(B)
        if not data:
            return
        data = data.ljust(B, b"\0")
        if data != zero:
            yield i, data
        i += 1
shas = {}
def put(item):
    i, data = item
    d = hashlib.sha256(data).digest()
    ebs.put_snapshot_block(SnapshotId=snap, BlockIndex=i, BlockData=data, DataLength=B,
                           Checksum=base64.b64encode(d).decode(), ChecksumAlgorithm="SHA256")
    shas[i] = d
with ThreadPoolExecutor(n) as pool:
    list(pool.map(put, blocks()))
agg = hashlib.sha256(b"".join(shas[i] for i in sorted(shas))).digest()
ebs.complete_snapshot(SnapshotId=snap, ChangedBlocksCount=len(shas), Checksum=base64.b64encode(agg).decode(),
                      ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR")
secs = time.time() - t0
print(f"{len(shas)} {secs:.3f}")
PY
}

median_of() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.2f}')" "$@"; }

table() {
    local url=$1 base=""
    echo "| blocks in flight | reconcile: upload | reconcile: whole apply | boto3 thread pool: upload | vs boto3 |"
    echo "|---|---|---|---|---|"
    for n in $INFLIGHT; do
        declare_farm "$n" "$url"
        ups=() walls=() peers=()
        for _ in $(seq "$RUNS"); do
            reset
            t0=$(date +%s.%N)
            said=$("$RECONCILE" apply -f "$D/farm.toml" --no-test 2>&1 | grep -o 'uploaded .*')
            t1=$(date +%s.%N)
            walls+=("$(python3 -c "print($t1 - $t0)")")
            ups+=("$(echo "$said" | sed -E 's/.* in ([0-9.]+) s,.*/\1/')")
            skip=$(echo "$said" | sed -E 's/.*\(([0-9]+) zero blocks skipped, ([0-9.]+)%\).*/\1 (\2%)/')
            sent=$(echo "$said" | sed -E 's/uploaded ([0-9]+) of ([0-9]+) blocks.*/\1 of \2/')
            reset
            peers+=("$(boto_upload "$n" "$url" | awk '{print $2}')")
        done
        up=$(median_of "${ups[@]}") wall=$(median_of "${walls[@]}") peer=$(median_of "${peers[@]}")
        mib=$(python3 -c "print(f'{(${sent%% *} * 0.5) / $up:.1f}')")
        [ -z "$base" ] && base=$up
        echo "| $n | $up s ($mib MiB/s, $(ratio "$base" "$up")× of 1 in flight) | $wall s | $peer s | $(ratio "$peer" "$up")× |"
    done
}

echo "moto direct:"
echo
table "$URL"
echo
echo "moto behind ${DELAY_MS:-20} ms per request:"
echo
table "$SLOW"
echo
echo "Blocks sent: $sent; zero blocks skipped: $skip."
