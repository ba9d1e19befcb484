#!/usr/bin/env bash
# Builds the eirinix image without a Docker engine or registry, from this repository's own files:
# the eirinix binary (static: glibc with `crt-static`, as .cargo/config.toml builds everything, so
# the ssh daemon runs in any app image), the root filesystem of images/eirinix/rootfs.sh (the
# Dockerfile runs the same script),
# packed as an OCI image archive. Load it with `ctr -n k8s.io images import FILE`,
# `podman load -i FILE`, or `skopeo copy oci-archive:FILE docker://REGISTRY/eirinix:TAG`.
#
#   scripts/build-image.sh                      # dist profile -> target/image/eirinix-dist.tar
#   scripts/build-image.sh --profile dev        # faster build, what the test suite loads
#   scripts/build-image.sh --name registry.example/eirinix:1.2 --out /tmp/eirinix.tar
#   scripts/build-image.sh --binary target/x86_64-unknown-linux-gnu/debug/eirinix   # no build
set -euo pipefail
cd "$(dirname "$0")/.."
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
profile=dist
name="eirinix.local/eirinix:$version"
out=""
bin=""
while (($#)); do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --binary) bin="$2"; shift 2 ;;
    --name) name="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "build-image: unknown argument $1" >&2; exit 2 ;;
  esac
done
export EIRINIX_VERSION="${EIRINIX_VERSION:-$version}"
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
out="${out:-$target_dir/image/eirinix-$profile.tar}"
dir="$profile"; [[ "$profile" == dev ]] && dir=debug
if [[ -z "$bin" ]]; then
  cargo build --locked --quiet --profile "$profile" -p eirinix-cli --bin eirinix
  bin="$target_dir/x86_64-unknown-linux-gnu/$dir/eirinix"
fi
rootfs="$target_dir/image/rootfs-$profile"
images/eirinix/rootfs.sh "$bin" "$rootfs"
cargo run --locked --quiet -p eirinix-testenv --example oci-image -- \
  --rootfs "$rootfs" --name "$name" --out "$out" \
  --entrypoint /usr/local/bin/eirinix --user 65532:65532 \
  --label org.opencontainers.image.title=eirinix \
  --label "org.opencontainers.image.version=$version" \
  --label org.opencontainers.image.source=https://github.com/eirinix/eirinix
