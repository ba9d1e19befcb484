#!/usr/bin/env bash
# Where the running webhook server's CPU time goes on one route, in µs per review: `eirinix-bench
# serve` pinned to core 1 as `ladder` pins it, loaded by `eirinix-bench load` at 64 connections
# on core 0, sampled by `perf record` (DWARF call stacks) for SECONDS after a 2 s warm-up.
#
#   scripts/server-profile.sh /persi [SECONDS]     # or /fixed, /ladder/typed, /ladder/lean, /ladder/spin, /ladder/churn
#   REST_LEAVES=20 scripts/server-profile.sh /persi  # also the top functions of "the rest"
#
# Uses the dist build in DIST_DIR (default: target/x86_64-unknown-linux-gnu/dist, built if
# absent); needs perf (Debian: linux-perf). Each sample is given to the first part whose function
# is on its stack, in the order printed; a part's µs are its share of the samples times the
# server's CPU per review over the same seconds (from /proc/<pid>/stat). Unlike callgrind's
# instruction counts (scripts/server-instructions.sh) this is time on the server, caches and
# kernel included: on loopback the server's send also runs the client's TCP receive and wakes it.
set -euo pipefail
cd "$(dirname "$0")/.."
route=${1:?usage: $0 /persi|/fixed [seconds]}
seconds=${2:-5}
command -v perf >/dev/null || { echo "perf is needed (apt-get install linux-perf)" >&2; exit 1; }
source scripts/lib/bench-server.sh
bench_setup
start_serve 20 taskset -c 1
load() {
  taskset -c 0 "$bench" load --addr "$addr" --ca-file "$work/ca.pem" --path "$route" --connections 64 --seconds "$1" | tail -1
}
cpu() { awk '{print $14 + $15}' "/proc/$server/stat"; }
load 2 >/dev/null
perf record -q -F 999 --call-graph dwarf,16384 -p "$server" -o "$work/perf.data" -- sleep "$seconds" 2>/dev/null &
recorder=$!
before=$(cpu)
result=$(load "$seconds")
after=$(cpu)
wait "$recorder"
exec 3>&-
wait "$server"
perf script -i "$work/perf.data" 2>/dev/null | python3 -c '
import json, os, re, sys
result = json.loads(sys.argv[1]); ticks = int(sys.argv[2]) - int(sys.argv[3]); route = sys.argv[4]
ok, errors, elapsed = result["ok"], result["errors"], result["elapsed"]
if ok == 0 or errors:
    sys.exit(f"{route}: {ok} answered, {errors} errors")
us_per_review = ticks / os.sysconf("SC_CLK_TCK") * 1e6 / ok
# (part, functions on the stack that mark it), checked in this order: inlining hides some
# frames, so a part is also marked by the libraries only it calls.
parts = [
    ("extension (persi; the lean prototype: its VCAP_SERVICES reader)",
     ["ViewExtension>::mutate_view", "Extension>::mutate::", "eirinix_persi::"]),
    ("encode the answer", ["Answer::encode"]),
    ("decode (simd-json tape, typing the view or the Pod)",
     ["Hook>::prepare+", "Hook>::prepare (", "eirinix_core::decode::", "simd_json::", "k8s_openapi::"]),
    ("the lean prototype: its own code (benches/src/lean.rs)", ["eirinix_bench::lean::"]),
    ("the spin or churn of /ladder/spin and /ladder/churn (benches/src/ladder.rs)",
     ["eirinix_bench::ladder::spin", "eirinix_bench::ladder::churn"]),
    ("receive: TCP and TLS", ["TokioIo<T> as hyper::rt::io::Read>::poll_read"]),
    ("send: TLS, TCP and loopback delivery to the client", ["__writev"]),
    ("the rest: HTTP, routing, layers, metrics, runtime", [""]),
]
rest_leaves = {}
counts = {name: 0 for name, _ in parts}
wakeups = 0
stack = []
def take(stack):
    global wakeups
    if not stack:
        return
    text = "\n".join(stack)
    wakeups += "sock_def_readable" in text
    for name, marks in parts:
        if any(m in text for m in marks):
            counts[name] += 1
            if not marks[0]:
                leaf = re.sub(r"\+0x[0-9a-f]+ .*| \(.*", "", stack[0].split(" ", 1)[-1])
                rest_leaves[leaf] = rest_leaves.get(leaf, 0) + 1
            return
for line in sys.stdin:
    if not line.strip():
        take(stack); stack = []
    elif line[0] in " \t":
        stack.append(line.strip())
take(stack)
total = sum(counts.values())
print(f"{route}: {ok} reviews in {elapsed:.1f} s, server CPU {us_per_review:.1f} µs per review, {total} samples")
print("| part | share of samples | µs per review |")
print("|---|---|---|")
for name, _ in parts:
    share = counts[name] / max(total, 1)
    print(f"| {name} | {100 * share:.1f} % | {share * us_per_review:.1f} |")
for leaf, n in sorted(rest_leaves.items(), key=lambda kv: -kv[1])[: int(os.environ.get("REST_LEAVES", "0"))]:
    print(f"|   rest, in {leaf[:110]} | {100 * n / max(total, 1):.1f} % | {n / max(total, 1) * us_per_review:.1f} |")
print(f"| of all: waking the client (sock_def_readable) | {100 * wakeups / max(total, 1):.1f} % | {wakeups / max(total, 1) * us_per_review:.1f} |")
' "$result" "$after" "$before" "$route"
