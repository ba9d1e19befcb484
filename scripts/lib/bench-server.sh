# Sourced by the scripts that measure a running `eirinix-bench serve` (server-instructions.sh,
# server-profile.sh): the dist build, and the server started under a command prefix.
#
#   bench_setup                  # sets $bench (DIST_DIR's, built first when DIST_DIR is unset)
#                                # and $work (a temporary folder, removed on exit)
#   start_serve WAIT PREFIX...   # `PREFIX... $bench serve`, its stdin held open on fd 3 (close
#                                # fd 3 to end it); waits up to WAIT seconds for its address,
#                                # then sets $server (pid), $addr and writes $work/ca.pem

bench_setup() {
  if [[ -z "${DIST_DIR:-}" ]]; then
    cargo build --profile dist -p eirinix-bench
    DIST_DIR=${CARGO_TARGET_DIR:-$PWD/target}/x86_64-unknown-linux-gnu/dist
  fi
  bench=$DIST_DIR/eirinix-bench
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
}

start_serve() {
  local wait=$1 tries=0 ca
  shift
  mkfifo "$work/stdin"
  "$@" "$bench" serve <"$work/stdin" >"$work/serve.out" 2>"$work/serve.err" &
  server=$!
  exec 3>"$work/stdin"
  until [[ -s $work/serve.out ]]; do
    kill -0 "$server" 2>/dev/null || { cat "$work/serve.err" >&2; exit 1; }
    ((tries++ < wait * 5)) || { echo "the server did not start within $wait s" >&2; exit 1; }
    sleep 0.2
  done
  read -r addr ca < <(head -1 "$work/serve.out" | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["addr"], json.dumps(j["ca"]))')
  python3 -c 'import json,sys; open(sys.argv[1],"w").write(json.loads(sys.argv[2]))' "$work/ca.pem" "$ca"
}
