#!/usr/bin/env bash
# Prints the medians of the last `cargo bench` run of the criterion benches (model, encode,
# apply, readback) as a Markdown table: benchmark id, median, and criterion's 95% confidence
# interval of the mean. Usage: benches/criterion-summary.sh [ID-REGEX]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${CARGO_TARGET_DIR:-target}/criterion
[ -d "$dir" ] || { echo "no $dir: run cargo bench first" >&2; exit 1; }
command -v jq >/dev/null || { echo "needs jq" >&2; exit 2; }
fmt() { awk -v ns="$1" 'BEGIN { if (ns >= 1e6) printf "%.2f ms", ns / 1e6; else if (ns >= 1e3) printf "%.1f µs", ns / 1e3; else printf "%.0f ns", ns }'; }
echo "| benchmark | median | mean (95% CI) |"
echo "|---|---|---|"
find "$dir" -path '*/new/benchmark.json' | sort | while read -r b; do
  id=$(jq -r .full_id "$b")
  [[ "$id" =~ ${1:-.} ]] || continue
  e="${b%benchmark.json}estimates.json"
  med=$(jq -r .median.point_estimate "$e")
  lo=$(jq -r .mean.confidence_interval.lower_bound "$e")
  hi=$(jq -r .mean.confidence_interval.upper_bound "$e")
  echo "| $id | $(fmt "$med") | $(fmt "$lo") – $(fmt "$hi") |"
done
