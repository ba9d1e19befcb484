#!/usr/bin/env bash
# Builds the controller-runtime peer of `eirinix-bench peers`: controller-runtime/main.go in a Go
# module made here (nothing of it is committed), against the newest controller-runtime v0.x
# release on the Go module proxy (or CONTROLLER_RUNTIME_VERSION). Prints the binary's path.
#
#   benches/peers/build-controller-runtime.sh     # -> target/peers/controller-runtime-persi
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
work="$target_dir/peers/controller-runtime"
out="$target_dir/peers/controller-runtime-persi"
mkdir -p "$work"
cd "$work"
version="${CONTROLLER_RUNTIME_VERSION:-}"
if [[ -z "$version" ]]; then
  # The newest v0.N.M without a pre-release suffix.
  version="$(go list -m -versions sigs.k8s.io/controller-runtime | tr ' ' '\n' \
    | grep -E '^v0\.[0-9]+\.[0-9]+$' | sort -V | tail -1)"
fi
cp "$here/controller-runtime/main.go" main.go
if [[ ! -f go.mod ]] || ! grep -q "sigs.k8s.io/controller-runtime $version\$" go.mod; then
  rm -f go.mod go.sum
  go mod init eirinix.local/bench/controller-runtime-persi >/dev/null 2>&1
  go get "sigs.k8s.io/controller-runtime@$version" >&2
fi
go mod tidy >&2
CGO_ENABLED=0 go build -trimpath -o "$out" . >&2
echo "controller-runtime $version" > "$out.version"
echo "$out"
