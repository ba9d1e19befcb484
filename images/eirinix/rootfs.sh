#!/usr/bin/env bash
# The root filesystem of the eirinix image, in one place for both ways of building it (the
# Dockerfile and scripts/build-image.sh): the static binary, CA roots, users root / nobody /
# nonroot (65532), /tmp, and nothing else (no shell, no package manager). Run as root: owners
# and modes are part of the layout.
#
#   images/eirinix/rootfs.sh BINARY OUT_DIR [CA_BUNDLE]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$1" out="$2" ca="${3:-/etc/ssl/certs/ca-certificates.crt}"
[[ -x "$bin" ]] || { echo "rootfs.sh: $bin is not an executable" >&2; exit 1; }
[[ -f "$ca" ]] || { echo "rootfs.sh: CA bundle $ca missing (Debian package ca-certificates)" >&2; exit 1; }
rm -rf "$out"
install -d -m 0755 "$out" "$out/etc" "$out/etc/ssl" "$out/etc/ssl/certs" "$out/usr" "$out/usr/local" "$out/usr/local/bin"
install -m 0644 "$here/passwd" "$here/group" "$here/nsswitch.conf" "$out/etc/"
install -m 0644 "$ca" "$out/etc/ssl/certs/ca-certificates.crt"
install -d -m 1777 "$out/tmp"
install -d -m 0700 -o 65532 -g 65532 "$out/home/nonroot"
chmod 0755 "$out/home"
install -m 0755 "$bin" "$out/usr/local/bin/eirinix"
