#!/bin/sh
# Runs one fuzz target until 10 million executions or 30 minutes, whichever
# comes first (MAX_TIME seconds, default 1800), then minimises its corpus:
# `./run.sh <target> [log file]`.
# Needs nightly and cargo-fuzz (`cargo install cargo-fuzz`).
set -eu
t="$1"
log="${2:-/dev/stdout}"
cd "$(dirname "$0")"
nice -n 15 cargo +nightly fuzz run "$t" -- \
    -runs=10000000 -max_total_time="${MAX_TIME:-1800}" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1
nice -n 15 cargo +nightly fuzz cmin "$t" >>"$log" 2>&1
