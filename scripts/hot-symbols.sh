#!/usr/bin/env bash
# Regenerates eirinix-cli/hot-symbols.txt: every function the `eirinix run` server executes
# while it starts, idles and answers admission load (`eirinix-bench process` with all four
# stock extensions against the real kube-apiserver), recorded by valgrind's callgrind, in the
# order they first ran. eirinix-cli/build.rs hands the list to the linker (lld's
# --symbol-ordering-file) for optimised builds, so the server's code sits in a few megabytes at
# the front of .text instead of scattered over all of it (idle RSS: see BENCHMARKS.md §4).
#
#   scripts/hot-symbols.sh            # builds the dist profile first
#   DIST_DIR=/path/to/dist scripts/hot-symbols.sh   # profile binaries already built there
#
# Names are symbol names of the dist build (hashes included): functions whose names change
# (new dependency versions, renamed code) simply lose their place until this is run again.
# The hashes also depend on the features each crate is built with, so the `eirinix` binary is
# built alone, exactly as the Dockerfile and scripts/build-image.sh build it: built in one cargo
# invocation with eirinix-bench, eirinix-core gets the bench's `internals` feature and a third
# of the names differ (BENCHMARKS.md §20). The benchmark is built in a second invocation.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
if [[ -z "${DIST_DIR:-}" ]]; then
  cargo build --locked --profile dist -p eirinix-cli --bin eirinix
  cargo build --locked --profile dist -p eirinix-bench
  DIST_DIR=${CARGO_TARGET_DIR:-$root/target}/x86_64-unknown-linux-gnu/dist
fi
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/eirinix" <<WRAP
#!/bin/sh
exec valgrind --tool=callgrind --demangle=no --dump-instr=no --callgrind-out-file=$work/cg.%p "$DIST_DIR/eirinix" "\$@"
WRAP
chmod +x "$work/eirinix"
EIRINIX_BIN="$work/eirinix" "$DIST_DIR/eirinix-bench" process --idle 20 >"$work/bench.log" 2>&1 &
bench=$!
# callgrind writes its profile at exit, and the benchmark ends the server with SIGKILL: ask
# for a dump every two seconds instead (each dump holds what ran since the previous one).
while kill -0 "$bench" 2>/dev/null; do
  sleep 2
  callgrind_control -d >/dev/null 2>&1 || true
done
wait "$bench" || { echo "the benchmark failed:" >&2; tail -20 "$work/bench.log" >&2; exit 1; }
ls "$work"/cg.* >/dev/null
python3 - "$work" "$root/eirinix-cli/hot-symbols.txt" <<'PY'
import glob, os, re, sys
work, out = sys.argv[1], sys.argv[2]
def order(path):
    base = os.path.basename(path)
    pid, _, part = base[3:].partition(".")
    return (int(pid), int(part or 0))
seen, names = set(), []
# callgrind marks recursion levels with a '<n> suffix: not part of the symbol.
name_re = re.compile(r"^c?fn=\(\d+\) (\S+?)(?:'\d+)?$")
for path in sorted(glob.glob(os.path.join(work, "cg.*")), key=order):
    for line in open(path, errors="replace"):
        m = name_re.match(line.rstrip("\n"))
        if m and not m.group(1).startswith("0x") and m.group(1) not in seen:
            seen.add(m.group(1))
            names.append(m.group(1))
with open(out, "w") as f:
    f.write("\n".join(names) + "\n")
print(f"{len(names)} functions -> {out}")
PY
