#!/usr/bin/env bash
# Builds the fuzz targets and runs each for a bounded time on a copy of its seed corpus.
# Fails (exit 1) on any crash, panic, invariant violation (a panic in the target), timeout
# (a single input running longer than FUZZ_TIMEOUT seconds: a hang) or out-of-memory.
#
#   fuzz/run.sh                     # every target, FUZZ_SECONDS (default 15) each
#   FUZZ_SECONDS=600 fuzz/run.sh session transfer
#   fuzz/run.sh --build-only
#
# Works on stable Rust: RUSTC_BOOTSTRAP=1 unlocks cargo's `profile-rustflags`, which
# instruments only corepop and the targets (see fuzz/Cargo.toml). Findings are written to
# fuzz/artifacts/<target>/; new inputs found go to a scratch corpus, not to the seeds (copy
# interesting ones into fuzz/corpus/<target>/ by hand).
set -euo pipefail
cd "$(dirname "$0")"
TARGETS_ALL=(line_decoder command session transfer passwd maildir_name index)
SECONDS_EACH="${FUZZ_SECONDS:-15}"
TIMEOUT="${FUZZ_TIMEOUT:-10}"
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
BUILD_ONLY=0
TARGETS=()
for a in "$@"; do
  case "$a" in
    --build-only) BUILD_ONLY=1 ;;
    *) TARGETS+=("$a") ;;
  esac
done
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${TARGETS_ALL[@]}")

start=$(date +%s)
RUSTC_BOOTSTRAP=1 cargo build --locked --profile fuzz --target "$TRIPLE" --bins
echo "fuzz: build took $(( $(date +%s) - start )) s"
[ "$BUILD_ONLY" = 1 ] && exit 0

BIN="target/$TRIPLE/fuzz"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/corepop-fuzz.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
fail=0
summary=""
for t in "${TARGETS[@]}"; do
  mkdir -p "$WORK/$t" "artifacts/$t"
  cp -r "corpus/$t/." "$WORK/$t/" 2>/dev/null || true
  log="$WORK/$t.log"
  set +e
  "$BIN/$t" "$WORK/$t" -max_total_time="$SECONDS_EACH" -timeout="$TIMEOUT" \
    -rss_limit_mb=2048 -max_len=4096 -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  line=$(printf '%-13s %10s execs  cov %6s  exit %s' "$t" "${execs:-?}" "${cov:-?}" "$rc")
  echo "fuzz: $line"
  summary+="$line"$'\n'
  if [ "$rc" -ne 0 ]; then
    fail=1
    echo "fuzz: $t FAILED; last 60 lines of its log:"
    tail -60 "$log"
    ls -l "artifacts/$t/" || true
  fi
done
printf '\nfuzz summary (%s s per target):\n%s' "$SECONDS_EACH" "$summary"
exit $fail
