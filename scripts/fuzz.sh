#!/usr/bin/env bash
# Build every cargo-fuzz target of fuzz/ once, then run each for a bounded time.
#
#   scripts/fuzz.sh                       # all targets, 60 s each
#   FUZZ_SECONDS=20 scripts/fuzz.sh       # shorter
#   FUZZ_TARGETS="persi_handler" scripts/fuzz.sh
#
# Environment:
#   FUZZ_SECONDS        run time per target (libFuzzer -max_total_time), default 60
#   FUZZ_TARGETS        space-separated targets, default: all (`cargo fuzz list`)
#   FUZZ_SANITIZER      address | none (default: none, see fuzz/README.md)
#   FUZZ_TARGET_DIR     build directory, default fuzz/target (CARGO_TARGET_DIR is ignored)
#   FUZZ_BUILD_TIMEOUT  seconds allowed for the build, default 2400
#   FUZZ_CODEGEN_UNITS  codegen units (cargo-fuzz's default is 1: slow builds), default 16
#   FUZZ_ARGS           extra libFuzzer arguments for every target
#   FUZZ_BUILD_ONLY     set: install cargo-fuzz and build the targets, run nothing
#   FUZZ_JOBS           targets fuzzed at the same time, default: the number of cores
#
# Seeds come from fuzz/corpus/<target> (committed, never written to); what the fuzzers find goes
# to a scratch corpus in $FUZZ_TARGET_DIR/corpus/<target>. Crashes land in
# fuzz/artifacts/<target>/ and fail the script, with the command to reproduce them.
# Needs a nightly compiler, or stable with RUSTC_BOOTSTRAP=1 (set here when not on nightly).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ_DIR="$ROOT/fuzz"
SECONDS_PER_TARGET="${FUZZ_SECONDS:-60}"
SANITIZER="${FUZZ_SANITIZER:-none}"
TARGET_DIR="${FUZZ_TARGET_DIR:-$FUZZ_DIR/target}"
BUILD_TIMEOUT="${FUZZ_BUILD_TIMEOUT:-2400}"
LOG_DIR="$TARGET_DIR/fuzz-logs"

log() { printf '==> %s\n' "$*" >&2; }

case "$SECONDS_PER_TARGET" in
'' | *[!0-9]*)
  echo "FUZZ_SECONDS must be a whole number of seconds, got '$SECONDS_PER_TARGET'" >&2
  exit 2
  ;;
esac

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
# cargo-fuzz passes -Z flags (sanitizer coverage): fine on nightly, needs bootstrap on stable.
if [[ "$(rustc --version)" != *nightly* ]]; then
  export RUSTC_BOOTSTRAP=1
fi
unset CARGO_TARGET_DIR
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

cd "$ROOT"
if [ -n "${FUZZ_TARGETS:-}" ]; then
  read -r -a TARGETS <<<"$FUZZ_TARGETS"
else
  mapfile -t TARGETS < <(cargo fuzz list --fuzz-dir "$FUZZ_DIR")
fi
if [ "${#TARGETS[@]}" -eq 0 ]; then
  echo "no fuzz targets" >&2
  exit 2
fi

HOST="$(rustc -vV | sed -n 's/^host: //p')"
BIN_DIR="$TARGET_DIR/$HOST/release"

log "building ${#TARGETS[@]} fuzz target(s) (sanitizer: $SANITIZER)"
build_start=$(date +%s)
build_args=(build --fuzz-dir "$FUZZ_DIR" --target-dir "$TARGET_DIR" --release --debug-assertions
  -s "$SANITIZER" --codegen-units "${FUZZ_CODEGEN_UNITS:-16}")
if [ -n "${FUZZ_TARGETS:-}" ]; then
  for t in "${TARGETS[@]}"; do
    timeout -k 30 "$BUILD_TIMEOUT" cargo fuzz "${build_args[@]}" "$t"
  done
else
  timeout -k 30 "$BUILD_TIMEOUT" cargo fuzz "${build_args[@]}"
fi
build_secs=$(($(date +%s) - build_start))
log "built in ${build_secs}s"
if [ -n "${FUZZ_BUILD_ONLY:-}" ]; then
  exit 0
fi

# libFuzzer's dictionary per target.
dict_for() {
  case "$1" in
  logs_*) echo "$FUZZ_DIR/dict/logs.dict" ;;
  *) echo "$FUZZ_DIR/dict/pod.dict" ;;
  esac
}
max_len_for() {
  case "$1" in
  logs_*) echo 8192 ;;
  *) echo 32768 ;;
  esac
}
# The last value of a libFuzzer final stat.
final_stat() { sed -n "s/^stat::$1: *//p" "$2" | tail -n1; }

# Run one target; writes "<rc>" to $LOG_DIR/<target>.rc and the summary line to .line.
run_target() {
  local t="$1"
  local bin="$BIN_DIR/$t"
  local seeds="$FUZZ_DIR/corpus/$t"
  local scratch="$TARGET_DIR/corpus/$t"
  local artifacts="$FUZZ_DIR/artifacts/$t"
  local out="$LOG_DIR/$t.log"
  mkdir -p "$scratch" "$artifacts" "$seeds"
  local start rc secs
  start=$(date +%s)
  set +e
  # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
  timeout -k 10 "$((SECONDS_PER_TARGET + 120))" "$bin" \
    "$scratch" "$seeds" \
    -max_total_time="$SECONDS_PER_TARGET" \
    -timeout=10 \
    -rss_limit_mb=2048 \
    -max_len="$(max_len_for "$t")" \
    -dict="$(dict_for "$t")" \
    -artifact_prefix="$artifacts/" \
    -print_final_stats=1 \
    ${FUZZ_ARGS:-} >"$out" 2>&1
  rc=$?
  set -e
  secs=$(($(date +%s) - start))
  local execs rate new rss cov status
  execs="$(final_stat number_of_executed_units "$out")"
  rate="$(final_stat average_exec_per_sec "$out")"
  new="$(final_stat new_units_added "$out")"
  rss="$(final_stat peak_rss_mb "$out")"
  cov="$(grep -Eo 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$out" | tail -n1 || true)"
  case "$rc" in
  0) status=ok ;;
  124 | 137) status="FAILED (did not stop in time)" ;;
  *) status="FAILED (exit $rc)" ;;
  esac
  printf 'fuzz %-18s %-8s %10s execs %7s/s %4ss  %s  new %s  rss %sMB\n' \
    "$t" "$status" "${execs:-?}" "${rate:-?}" "$secs" "${cov:-cov: ?}" "${new:-?}" "${rss:-?}" >"$LOG_DIR/$t.line"
  echo "$rc" >"$LOG_DIR/$t.rc"
}

# One libFuzzer process per core (each is single-threaded).
JOBS="${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 1)}"
[ "$JOBS" -ge 1 ] 2>/dev/null || JOBS=1
mkdir -p "$LOG_DIR"
rm -f "$LOG_DIR"/*.rc "$LOG_DIR"/*.line
log "fuzzing ${#TARGETS[@]} target(s) for ${SECONDS_PER_TARGET}s each, $JOBS at a time"
running=0
for t in "${TARGETS[@]}"; do
  if [ "$running" -ge "$JOBS" ]; then
    wait -n || true
    running=$((running - 1))
  fi
  log "fuzzing $t"
  run_target "$t" &
  running=$((running + 1))
done
wait || true

failed=()
summary=()
for t in "${TARGETS[@]}"; do
  rc="$(cat "$LOG_DIR/$t.rc" 2>/dev/null || echo missing)"
  line="$(cat "$LOG_DIR/$t.line" 2>/dev/null || echo "fuzz $t: no result")"
  summary+=("$line")
  if [ "$rc" != 0 ]; then
    failed+=("$t")
    echo "---- $t: last lines of $LOG_DIR/$t.log" >&2
    tail -n 60 "$LOG_DIR/$t.log" >&2 || true
    for a in $(grep -Eo "Test unit written to [^ ]+" "$LOG_DIR/$t.log" | awk '{print $5}'); do
      echo "---- reproduce: $BIN_DIR/$t $a" >&2
    done
  fi
done

echo
echo "fuzz summary (build ${build_secs}s, ${SECONDS_PER_TARGET}s per target, $JOBS at a time, sanitizer $SANITIZER):"
printf '  %s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]} (logs in $LOG_DIR, inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz: all ${#TARGETS[@]} target(s) ran without a crash"
