#!/usr/bin/env bash
# Instructions the running webhook server spends per request on one route, and where they go:
# `eirinix-bench serve` (rustls, hyper, axum, persi and the `/fixed` ceiling) under callgrind,
# loaded by `eirinix-bench load` at 8 connections for SECONDS, then ended by closing its stdin.
#
#   scripts/server-instructions.sh /persi [SECONDS]     # or /fixed
#
# Uses the dist build in DIST_DIR (default: target/x86_64-unknown-linux-gnu/dist, built if absent).
# Prints requests answered, instructions per request over the whole run (startup included, a
# few percent at 20 s), and per request inside the route handler (the review's decode, the
# extension and the answer's encoding; for /fixed the constant answer). Callgrind counts
# instructions, not time: the counts repeat on a busy machine, which wall-clock CPU figures do
# not.
set -euo pipefail
cd "$(dirname "$0")/.."
route=${1:?usage: $0 /persi|/fixed [seconds]}
seconds=${2:-20}
if [[ -z "${DIST_DIR:-}" ]]; then
  cargo build --profile dist -p eirinix-bench
  DIST_DIR=${CARGO_TARGET_DIR:-$PWD/target}/x86_64-unknown-linux-gnu/dist
fi
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
bench=$DIST_DIR/eirinix-bench
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkfifo "$work/stdin"
valgrind --tool=callgrind --callgrind-out-file="$work/cg" "$bench" serve <"$work/stdin" >"$work/serve.out" 2>"$work/serve.err" &
server=$!
exec 3>"$work/stdin"
for _ in $(seq 1 240); do
  [[ -s $work/serve.out ]] && break
  kill -0 "$server" 2>/dev/null || { cat "$work/serve.err" >&2; exit 1; }
  sleep 0.5
done
[[ -s $work/serve.out ]] || { echo "the server did not start within 120 s" >&2; exit 1; }
read -r addr ca < <(head -1 "$work/serve.out" | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["addr"], json.dumps(j["ca"]))')
python3 -c 'import json,sys; open(sys.argv[1],"w").write(json.loads(sys.argv[2]))' "$work/ca.pem" "$ca"
result=$("$bench" load --addr "$addr" --ca-file "$work/ca.pem" --path "$route" --connections 8 --seconds "$seconds" | tail -1)
exec 3>&-
wait "$server"
ok=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["ok"])' "$result")
[[ $ok -gt 0 ]] || { echo "no request was answered: $result" >&2; exit 1; }
callgrind_annotate --inclusive=yes "$work/cg" 2>/dev/null | python3 -c '
import re, sys
ok = int(sys.argv[1]); route = sys.argv[2]
wanted = {
    "whole run": ["PROGRAM TOTALS"],
    # The route handler after the body is collected: handle_body is inlined into it.
    "route handler": ["<F as axum::handler::Handler<(M,T1,T2),S>>::call::{{closure}} ["],
    "  decode": ["eirinix_core::decode::decode ["],
    "  extension (persi mutate)": ["as eirinix_core::extension::Extension>::mutate::{{closure}} ["],
    "  encode the answer": ["eirinix_core::admission::Answer::encode ["],
}
found = {}
for line in sys.stdin:
    m = re.match(r"\s*([\d,]+) ", line)
    if not m:
        continue
    for label, needles in wanted.items():
        if label not in found and any(n in line for n in needles):
            found[label] = int(m.group(1).replace(",", ""))
print(f"{route}: {ok} requests answered")
for label in wanted:
    if label in found:
        print(f"{label:32} {found[label] / ok / 1000:8.1f}k instructions per request")
' "$ok" "$route"
