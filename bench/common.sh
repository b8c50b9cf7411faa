# Shared helpers for the benchmarks. Source it; do not run it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA=${BENCH_DATA:-$ROOT/target/bench-data}
RECONCILE=$ROOT/target/release/reconcile

bench_setup() {
    for cmd in hyperfine rsync /usr/bin/time; do
        if ! command -v "$cmd" >/dev/null 2>&1; then
            if [ "$(id -u)" = 0 ]; then
                apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hyperfine rsync time >/dev/null
            else
                echo "bench: needs hyperfine, rsync and GNU time (apt-get install hyperfine rsync time)" >&2
                exit 1
            fi
        fi
    done
    (cd "$ROOT" && cargo build --release --quiet)
    mkdir -p "$DATA"
}

# mean seconds of command N (0-based) in a hyperfine JSON export
mean() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['results'][int(sys.argv[2])]['mean'])" "$1" "$2"; }
median() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['results'][int(sys.argv[2])]['median'])" "$1" "$2"; }
# the median of the numbers given as arguments
med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.2f}')" "$1" "$2"; }
ms() { python3 -c "import sys; print(f'{float(sys.argv[1])*1000:.1f}')" "$1"; }

# every built-in console check of src/harness/checks.rs as one PCRE alternation (for `grep -P`)
builtin_pcre() {
    python3 - "$ROOT/src/harness/checks.rs" <<'PY'
import re, sys
src = open(sys.argv[1]).read()
block = src[src.index("pub const BUILTIN"):]
block = block[:block.index("\n];")]
pats = re.findall(r'(?:check\(\s*"[^"]*",\s*|regex:\s*)r"((?:[^"\\]|\\.)*)"', block)
print("|".join(f"(?:{p})" for p in pats))
PY
}

# the same as POSIX extended regexes for `grep -E` (GNU grep knows \b and \w)
builtin_ere() {
    builtin_pcre | sed -e 's/(?:/(/g' -e 's/\\d/[0-9]/g'
}
