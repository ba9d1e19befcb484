#!/usr/bin/env bash
# The whole test suite, as CI runs it: provision the real Kubernetes binaries (cached after the
# first run), install the Debian packages the tests use, check formatting and lints, run every
# test on the newest supported Kubernetes and the end-to-end core on the oldest, fuzz briefly.
#
#   scripts/test.sh                     # everything
#   scripts/test.sh -- --test-threads=1 # extra arguments go to `cargo test` (newest version, both lanes)
#
# Environment: EIRINIX_KUBE_VERSION (newest, default v1.37.2) and EIRINIX_OLDEST_KUBE_VERSION
# (default v1.33.13, "skip" to leave it out) choose the two versions.
set -euo pipefail
cd "$(dirname "$0")/.."

NEWEST="${EIRINIX_KUBE_VERSION:-v1.37.2}"
OLDEST="${EIRINIX_OLDEST_KUBE_VERSION:-v1.33.13}"
# Build results live in the cache beside the Kubernetes binaries, not in the clone: a fresh clone
# (CI) then rebuilds only this workspace's crates. Set CARGO_TARGET_DIR to use another place.
cache="${EIRINIX_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/eirinix}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
export CARGO_INCREMENTAL=0
start=$(date +%s)
step() { printf '\n==> %s (%ss)\n' "$*" "$(( $(date +%s) - start ))" >&2; }
failed=()
# Runs a step that may fail without stopping the suite: every failure is reported at the end.
check() {
  local name="$1"; shift
  if ! "$@"; then
    failed+=("$name")
    printf '\n!!! %s failed\n' "$name" >&2
  fi
}

step "provisioning Kubernetes $NEWEST, helm and CRDs (cached; a cold build takes about 9 minutes)"
assets="$(EIRINIX_KUBE_VERSION="$NEWEST" scripts/provision.sh --helm)"
echo "Kubernetes $("$assets/kube-apiserver" --version | cut -d' ' -f2) from $assets" >&2
# The oldest version's binaries build in the background while cargo builds (on a cold machine
# the two overlap; cached, this returns at once). Its log is printed if it fails.
oldest_log="$(mktemp)"
oldest_rc="$(mktemp -u)"
if [[ "$OLDEST" != skip ]]; then
  (EIRINIX_KUBE_VERSION="$OLDEST" nice -n 10 scripts/provision.sh >"$oldest_log" 2>&1
   echo $? >"$oldest_rc") &
fi
step "installing Debian packages the tests use"
scripts/install-deps.sh
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --quiet -- -D warnings
step "cargo fmt --check and clippy (fuzz crate, its own workspace)"
(cd fuzz && cargo fmt -- --check)
# Same target directory as the workspace: the two lock files pin the same versions, so the
# dependencies' lint builds are shared.
cargo clippy --manifest-path fuzz/Cargo.toml --all-targets --quiet -- -D warnings
step "the library crates alone (no workspace features) are clippy-clean with k8s-openapi's oldest and newest version features (v1_33, v1_37)"
libs=(-p eirinix-core -p eirinix-testenv -p eirinix-persi -p eirinix-ssh -p eirinix-logs -p eirinix-rootfs)
for feature in v1_33 v1_37; do
  cargo clippy --quiet --lib "${libs[@]}" --features "k8s-openapi/$feature" \
    --target-dir "$cache/k8s-openapi-check" -- -D warnings
done
step "the publishable crates: docs without warnings, cargo package (eirinix-core, eirinix-testenv)"
K8S_OPENAPI_ENABLED_VERSION=1.37 RUSTDOCFLAGS="-D warnings" \
  cargo doc --no-deps --quiet -p eirinix-core -p eirinix-testenv
cargo package --quiet --no-verify --allow-dirty -p eirinix-testenv -p eirinix-core
step "cargo test: build"
cargo test --workspace --no-run --quiet
# The instrumented fuzz build (cold: about 8 minutes, plus installing cargo-fuzz) runs at the
# lowest priority while the tests run, using what CPU they leave; cached, it returns at once.
fuzz_target_dir="${FUZZ_TARGET_DIR:-$cache/fuzz-target}"
fuzz_build_log="$(mktemp)"
FUZZ_BUILD_ONLY=1 FUZZ_TARGET_DIR="$fuzz_target_dir" nice -n 19 scripts/fuzz.sh >"$fuzz_build_log" 2>&1 &
fuzz_build_pid=$!
# The suite's own (static) eirinix binary is the image the node tests load.
export EIRINIX_IMAGE_BINARY="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/debug/eirinix"
step "the eirinix image from that binary (scripts/build-image.sh)"
scripts/build-image.sh --binary "$EIRINIX_IMAGE_BINARY" --profile dev
# Two lanes share the machine: most of a node test's time is spent waiting on kubelet, the
# runtime and the controllers, so running two test processes at once (each with its own cluster,
# see eirinix-testenv's slots) cuts the wall time. Lane A runs the longest targets, then the
# end-to-end core on the oldest version; lane B runs every other target, then the doc tests.
lane_a_tests=(install faults_e2e chart)
lane_a_log="$(mktemp)"
lane_a_failed="$(mktemp)"
lane_a() {
  if ! env EIRINIX_KUBE_VERSION="$NEWEST" cargo test --workspace --no-fail-fast \
      "${lane_a_tests[@]/#/--test=}" "$@"; then
    echo "tests on Kubernetes $NEWEST (lane A: ${lane_a_tests[*]})" >>"$lane_a_failed"
  fi
  [[ "$OLDEST" == skip ]] && return
  echo "==> waiting for Kubernetes $OLDEST (built in the background; a cold build takes about 9 minutes)"
  until [[ -s "$oldest_rc" ]]; do sleep 2; done
  if [[ "$(cat "$oldest_rc")" != 0 ]]; then
    cat "$oldest_log"
    echo "provisioning Kubernetes $OLDEST failed" >>"$lane_a_failed"
    return
  fi
  # One cargo invocation over the workspace: the same feature resolution as the build above, so
  # nothing is compiled again (`-p <package>` alone would rebuild with that package's features).
  local oldest_tests=(framework_e2e e2e rootfs_e2e node_e2e webhook_e2e follow_e2e node)
  echo "==> the end-to-end core of the framework and of each stock extension on Kubernetes $OLDEST: ${oldest_tests[*]}"
  if ! env EIRINIX_KUBE_VERSION="$OLDEST" \
      cargo test --quiet --workspace --no-fail-fast "${oldest_tests[@]/#/--test=}"; then
    echo "the end-to-end core on Kubernetes $OLDEST" >>"$lane_a_failed"
  fi
}
step "cargo test on Kubernetes $NEWEST in two lanes; lane A (${lane_a_tests[*]}, then $OLDEST) prints when it ends"
# The lanes run at once (about 7 minutes shorter on 2 cores); EIRINIX_TEST_LANES=1 runs them
# one after the other, which helps when reading one failure's log.
lane_a_pid=""
if [[ "${EIRINIX_TEST_LANES:-2}" == 2 ]]; then
  lane_a "$@" >"$lane_a_log" 2>&1 &
  lane_a_pid=$!
else
  lane_a "$@" >"$lane_a_log" 2>&1 || true
fi
mapfile -t lane_b_tests < <(cargo metadata --no-deps --format-version 1 |
  jq -r '[.packages[].targets[] | select(.kind | index("test")) | .name] | unique | .[]' |
  grep -vxF -f <(printf '%s\n' "${lane_a_tests[@]}"))
check "tests on Kubernetes $NEWEST (lane B)" env EIRINIX_KUBE_VERSION="$NEWEST" \
  cargo test --workspace --no-fail-fast --lib --bins "${lane_b_tests[@]/#/--test=}" "$@"
check "doc tests" cargo test --workspace --doc --quiet
step "lane B done; waiting for lane A"
[[ -z "$lane_a_pid" ]] || wait "$lane_a_pid" || true
cat "$lane_a_log" >&2
while IFS= read -r name; do failed+=("$name"); done <"$lane_a_failed"
step "both lanes done"

# Bounded fuzzing: 20 s per target (FUZZ_SECONDS), two at a time, from the committed seeds; the
# instrumented build is cached outside the clone (see fuzz/README.md).
step "fuzzing (scripts/fuzz.sh, ${FUZZ_SECONDS:-20} s per target)"
if ! wait "$fuzz_build_pid"; then
  cat "$fuzz_build_log" >&2
  failed+=("building the fuzz targets")
else
  check "fuzzing" env FUZZ_TARGET_DIR="$fuzz_target_dir" \
    FUZZ_SECONDS="${FUZZ_SECONDS:-20}" scripts/fuzz.sh
fi
step "done: Kubernetes $NEWEST (everything) and ${OLDEST} (end-to-end core)"
if ((${#failed[@]})); then
  printf 'FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
