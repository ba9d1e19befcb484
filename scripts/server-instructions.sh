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
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
source scripts/lib/bench-server.sh
bench_setup
start_serve 120 valgrind --tool=callgrind --callgrind-out-file="$work/cg"
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
    # persi is served from its view (a ViewExtension): its decode is the prepare of the ViewHook.
    # A Pod extension served from a typed Pod shows under the next two names instead.
    "  decode (a view of the pod)": ["as eirinix_core::hooks::Hook>::prepare ["],
    "  extension (persi mutate_view)": ["as eirinix_core::extension::ViewExtension>::mutate_view::{{closure}} ["],
    "  decode (a typed Pod)": ["eirinix_core::decode::decode ["],
    "  extension (mutate on a Pod)": ["as eirinix_core::extension::Extension>::mutate::{{closure}} ["],
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
