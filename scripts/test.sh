#!/usr/bin/env bash
# The whole test suite, as CI runs it: provision the real control plane (cached after the
# first run), install the Debian servers tests talk to, check lints, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
step() { printf '\n==> %s (%ss)\n' "$*" "$(( $(date +%s) - start ))" >&2; }

step "provisioning the Kubernetes binaries and helm (cached; a cold build takes about 10 minutes)"
assets="$(scripts/provision.sh --helm)"
echo "Kubernetes $("$assets/kube-apiserver" --version | cut -d' ' -f2) from $assets" >&2
step "installing Debian packages the tests use"
scripts/install-deps.sh
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --quiet -- -D warnings
step "cargo fmt --check and clippy (fuzz crate, its own workspace)"
(cd fuzz && cargo fmt -- --check)
CARGO_TARGET_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/eirinix/fuzz-clippy" \
  cargo clippy --manifest-path fuzz/Cargo.toml --all-targets --quiet -- -D warnings
step "cargo test: build"
cargo test --workspace --no-run --quiet
# The suite's own (static) eirinix binary is the image the node tests load.
export EIRINIX_IMAGE_BINARY="$PWD/target/x86_64-unknown-linux-gnu/debug/eirinix"
step "the eirinix image from that binary (scripts/build-image.sh)"
scripts/build-image.sh --binary "$EIRINIX_IMAGE_BINARY" --profile dev
step "cargo test"
cargo test --workspace --no-fail-fast "$@"
# Bounded fuzzing: 60 s per target, two at a time; the instrumented build is cached outside the
# clone (a cold build takes about 17 minutes on 2 cores, an incremental one about a minute).
step "fuzzing (scripts/fuzz.sh)"
FUZZ_TARGET_DIR="${FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/eirinix/fuzz-target}" scripts/fuzz.sh
step "done"
