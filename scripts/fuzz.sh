#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for SECONDS each (default 600) and prints, per
# target, how many inputs libFuzzer executed and which crashes it found.
#
#   scripts/fuzz.sh [SECONDS]
#
# Needs the nightly toolchain (libFuzzer's sanitizer flags); installs cargo-fuzz from
# crates.io if it is missing. Environment:
#   FUZZ_TARGETS  targets to run (default: all of them, see `cargo fuzz list`)
#   FUZZ_JOBS     how many targets run at the same time (default 1; each uses one core)
#   FUZZ_LOG_DIR  where libFuzzer's output goes (default fuzz/target/fuzz-logs)
#
# A crash leaves its reproducer in fuzz/artifacts/<target>/ (libFuzzer stops at the first
# one); replay it with `cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>`,
# minimise it with `cargo +nightly fuzz tmin <target> <file>`. Committed reproducers are
# replayed by `cargo test --test properties` on stable. Exit status: 1 if any target crashed.
set -euo pipefail

secs=${1:-600}
cd "$(dirname "$0")/../fuzz"
targets=${FUZZ_TARGETS:-"cni_config pod flags kubeconfig nft_dump xt_table"}
jobs=${FUZZ_JOBS:-1}
logs=${FUZZ_LOG_DIR:-target/fuzz-logs}
mkdir -p "$logs"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
# Build once, before the runs, so that parallel runs do not wait for each other's build.
cargo +nightly fuzz build

crashes_of() {
    ls "artifacts/$1" 2>/dev/null | grep -E '^(crash|leak|timeout|oom|slow-unit)-' || true
}

run_one() {
    local t=$1
    crashes_of "$t" >"$logs/$t.before"
    local rc=0
    # -timeout: an input running 10 s is reported (as a timeout artifact), not waited for.
    cargo +nightly fuzz run "$t" -- -max_total_time="$secs" -timeout=10 \
        -print_final_stats=1 >"$logs/$t.log" 2>&1 || rc=$?
    echo "$rc" >"$logs/$t.rc"
}

running=0
for t in $targets; do
    if [ "$running" -ge "$jobs" ]; then
        wait -n || true
        running=$((running - 1))
    fi
    echo "fuzzing $t for ${secs}s (log: fuzz/$logs/$t.log)"
    run_one "$t" &
    running=$((running + 1))
done
wait

status=0
printf '\n%-12s %14s %6s  %s\n' target executions rc "new crashes"
for t in $targets; do
    execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$logs/$t.log" | tail -1)
    new=$(crashes_of "$t" | grep -vxF -f "$logs/$t.before" || true)
    rc=$(cat "$logs/$t.rc")
    printf '%-12s %14s %6s  %s\n' "$t" "${execs:-?}" "$rc" "${new:-none}"
    if [ -n "$new" ] || [ "$rc" != 0 ]; then
        status=1
        for f in $new; do echo "  reproducer: fuzz/artifacts/$t/$f"; done
    fi
done
exit "$status"
